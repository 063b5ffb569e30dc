"""CoNLL-format tagging files: the word in the first column and its tag in the last, any number of columns
between (CoNLL-2003's `word POS chunk NER`, CoNLL-2002 Dutch's `word POS NER`, CoNLL-2000's `word POS chunk`,
plain `word NER`), blank-line separated sentences, `-DOCSTART-` lines anywhere, comment lines (`# ...`) before
a sentence, with or without a final newline. Or records, a sentence each: JSON lines as `datasets` writes them
(`{"tokens": [...], "ner_tags": [...]}`), or the Parquet files the Hugging Face hub stores, whose class ids are
named by the file's ClassLabel.
Entity tags may be IOB1, IOB2, IOBES or BILOU; they are returned in IOB2, which spans the same entities. A file
whose tags have no such prefix holds plain tags (part of speech: `NN`, `VERB`), each standing for its word
alone, kept as written. Tags may also be class ids (numbers) that the file does not name, kept as written (`"3"`):
their names come from the run's config (data/tasks.py). Universal Dependencies' CoNLL-U (`.conllu`) reads each
word's FORM and UPOS (its universal part of speech), skipping comments, multi-word token ranges and empty nodes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from jaxbatch.errors import DataError
from jaxbatch.data.files import RECORD_SUFFIXES, find_splits, place, read_text_file, records

SPLIT_FILES = {  # split -> candidate file names (a pattern: find_splits), first found wins
    split: (*columns, *(f"{name}{suffix}" for name in names for suffix in (*RECORD_SUFFIXES, ".conllu", ".conll")),
            *(f"*_{name}.conll" for name in names),  # MultiCoNER's en_train.conll
            f"*-ud-{names[-1]}.conllu",  # Universal Dependencies' en_ewt-ud-train.conllu
            *(f"{name}{shard}.parquet" for name in names for shard in ("-*", "/*")))  # the HF hub's shards
    for split, columns, names in (("train", ("eng.train", "train.txt"), ("train",)),
                                  ("validation", ("eng.testa", "valid.txt", "dev.txt"), ("validation", "valid", "dev")),
                                  ("test", ("eng.testb", "test.txt"), ("test",)))}
WORD_KEYS = ("tokens", "words")  # of a JSON sentence, the first one present
# of a JSON sentence, the first one present: `datasets`' conll2003 and wnut_17 say ner_tags, its UD treebanks upos
TAG_KEYS = ("ner_tags", "tags", "labels", "ner", "upos", "pos_tags")


@dataclasses.dataclass
class Sentence:
    words: list[str]
    tags: list[str]
    line: int = 0  # the file line of its first word (its k-th word is on line + k: lines_per_word); 0: not from a file


def iob1_to_iob2(tags: list[str]) -> list[str]:
    """IOB1 marks B- only between two adjacent entities of the same type; IOB2 starts every entity with B-.
    An I-X that does not continue an X entity starts one. Idempotent on IOB2 input."""
    out = []
    for i, tag in enumerate(tags):
        if tag.startswith("I-"):
            prev = out[i - 1] if i else "O"
            if prev == "O" or prev[2:] != tag[2:]:
                tag = "B-" + tag[2:]
        out.append(tag)
    return out


TO_IOB = {"B-": "B-", "I-": "I-", "S-": "B-", "U-": "B-", "E-": "I-", "L-": "I-"}  # IOBES / BILOU -> IOB
CONLL2003_IDS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")  # `datasets`', TFDS'


def _prefixed(tag: str) -> bool:
    return len(tag) > 2 and tag[:2] in TO_IOB


def is_entity_scheme(tags) -> bool:
    """Whether tags (a file's, or a label set) mark entities (some has a prefix of TO_IOB: entity F1, spans)
    rather than plain tags (each for its word alone: token accuracy and a per-tag report)."""
    return any(_prefixed(t) for t in tags)


def iob_tag(tag: str, where: str) -> str:
    """An entity tag in IOB (a single- or last-token prefix becomes B- or I-: the same entity spans)."""
    if tag == "O":
        return tag
    if not _prefixed(tag):
        raise DataError(f"{where}: tag {tag!r} is not O or PREFIX-TYPE with a prefix of {', '.join(TO_IOB)}, "
                        f"as the tags beside it are")
    return TO_IOB[tag[:2]] + tag[2:]


def in_scheme(tags: list[str], entities: bool, where) -> list[str]:
    """A sentence's tags as read for training: entity tags (IOB1, IOB2, IOBES or BILOU) in IOB2, plain tags as
    written; `where(k)` names tag k's place in an error."""
    return iob1_to_iob2([iob_tag(t, where(k)) for k, t in enumerate(tags)]) if entities else list(tags)


def is_ids(tags: list[str]) -> bool:
    """Whether a sentence's tags, as read, are class ids (numbers a file did not name) rather than names."""
    return all(t.isdigit() for t in tags)


def lines_per_word(path: Path) -> bool:
    """Whether a file's sentence's k-th word is on its line + k (column files), for messages naming a word."""
    return path.suffix not in (*RECORD_SUFFIXES, ".conllu")


def read(path: str | Path, tagged: bool = True) -> list[Sentence]:
    """Sentences of one file: entity tags in IOB2, plain tags and unnamed class ids as written. Errors name the
    file and line (or row). Not `tagged` (words to predict tags for), tags are not read, and may be absent."""
    path = Path(path)
    if path.suffix in RECORD_SUFFIXES:
        return _read_records(path, tagged)
    text = read_text_file(path)
    if path.suffix == ".conllu":
        return _read_conllu(path, text, tagged)
    lines = text.splitlines()
    rows = [line.split() for line in lines]
    comments = _comment_lines(rows)
    sentences, words, tags, columns, first = [], [], [], None, 0

    def flush():
        if words:
            sentences.append(Sentence(list(words), list(tags), first))
            words.clear()
            tags.clear()

    for number, (line, parts) in enumerate(zip(lines, rows), start=1):
        if not parts or parts[0] == "-DOCSTART-":
            flush()
            continue
        if number in comments:
            continue
        where = f"{path}:{number}"
        if len(parts) < 2 and tagged:
            raise DataError(f"{where}: expected the word, optional columns, then its tag; got one column: {line!r}")
        if columns is None:
            columns = len(parts)
        elif len(parts) != columns:
            raise DataError(f"{where}: {len(parts)} columns, but the file started with {columns}")
        first = first if words else number
        words.append(parts[0])
        tags.extend([parts[-1]] if tagged else [])
    flush()
    if not sentences:
        raise DataError(f"{path}: no sentences (only -DOCSTART- or blank lines)")
    return _in_file_scheme(path, sentences)


def _comment_lines(rows: list[list[str]]) -> set[int]:
    """The numbers of a column file's comment lines (`rows`: its lines, split into columns): lines that start
    with `#` before a sentence's first word (MultiCoNER's `# id <uuid> domain=en`) and cannot be a word's line:
    their column count is not the file's, or, in a file of entity tags, their last column is no entity tag. A
    tweet's `#` tagged O, or a POS file's `# SYM`, stays a word; a `#` line after a sentence's first word is read
    as a word (and refused if it is no word)."""
    word_lines = [parts for parts in rows if parts and parts[0] != "-DOCSTART-" and not parts[0].startswith("#")]
    if not word_lines:
        return set()
    columns = len(word_lines[0])
    entities = columns > 1 and is_entity_scheme(parts[-1] for parts in word_lines)
    comments, starting = set(), True
    for n, parts in enumerate(rows, start=1):
        if not parts or parts[0] == "-DOCSTART-":
            starting = True
        elif starting and parts[0].startswith("#") and (
                len(parts) != columns or (entities and parts[-1] != "O" and not _prefixed(parts[-1]))):
            comments.add(n)
        else:
            starting = False
    return comments


def _in_file_scheme(path: Path, sentences: list[Sentence]) -> list[Sentence]:
    """The sentences with their tags `in_scheme`: entity tags when any tag of the file is prefixed (then all must
    be), else plain. A word's line is its sentence's, plus its position where `lines_per_word`."""
    entities, step = is_entity_scheme(t for s in sentences for t in s.tags), int(lines_per_word(path))
    return [Sentence(s.words, in_scheme(s.tags, entities, lambda k, s=s: place(path, s.line + step * k)), s.line)
            for s in sentences]


def _tag_kind(tag) -> str | None:
    if isinstance(tag, str):
        return "name" if tag.strip() else None
    return "id" if isinstance(tag, int) and not isinstance(tag, bool) and tag >= 0 else None


def _read_records(path: Path, tagged: bool) -> list[Sentence]:
    """JSON lines or Parquet: a word list and a tag list per record, tags all names or all class ids (named at
    once when the file names its ClassLabel's classes, as `datasets`' Parquet files do); a record holding only
    -DOCSTART- (`datasets` keeps them as sentences) or no words is skipped, as a blank line of a column file."""
    rows, class_names = records(path)
    sentences, file_kind = [], None
    for number, row in rows:
        where = place(path, number)
        words_key = next((k for k in WORD_KEYS if k in row), None)
        tags_key = next((k for k in TAG_KEYS if k in row), None)
        if words_key is None or (tags_key is None and tagged):
            raise DataError(f"{where}: expected a word list ({' or '.join(WORD_KEYS)}) and a tag list "
                            f"({' or '.join(TAG_KEYS)}), got the keys {', '.join(row) or 'none'}")
        words = row[words_key]
        if not (isinstance(words, list) and all(isinstance(w, str) and w.strip() for w in words)):
            raise DataError(f"{where}: {words_key!r} must be a list of non-empty strings")
        if not words or words == ["-DOCSTART-"]:
            continue
        if not tagged:
            sentences.append(Sentence(words, [], number))
            continue
        tags = row[tags_key]
        if tags_key in class_names and isinstance(tags, list) and all(_tag_kind(t) == "id" for t in tags):
            names = class_names[tags_key]
            if any(t >= len(names) for t in tags):
                raise DataError(f"{where}: {tags_key!r} holds an id past its {len(names)} class names: {tags}")
            tags = [names[t] for t in tags]
        if not (isinstance(tags, list) and len(tags) == len(words)):
            raise DataError(f"{where}: {tags_key!r} must be a list with one tag per word ({len(words)})")
        kinds = {_tag_kind(t) for t in tags}
        kind = kinds.pop() if len(kinds) == 1 else None
        if kind is None or kind != (file_kind or kind):
            raise DataError(f"{where}: {tags_key!r} must hold tag names (non-empty strings) or class ids (whole "
                            f"numbers from 0), one kind in the whole file, got {tags}")
        file_kind = kind
        sentences.append(Sentence(words, [str(t).strip() for t in tags], number))  # " B-PER" is B-PER, as in columns
    if not sentences:
        raise DataError(f"{path}: no sentences (only -DOCSTART- or empty word lists)")
    return sentences if file_kind != "name" else _in_file_scheme(path, sentences)


def _read_conllu(path: Path, text: str, tagged: bool) -> list[Sentence]:
    """CoNLL-U: ten tab-separated columns per word (ID FORM LEMMA UPOS ...), `#` comments, blank lines between
    sentences; a range ID (`3-4`, a multi-word token) or decimal ID (an empty node) is not a word of the tree.
    A sentence's line is its first word's; ranges between its words break the one-word-per-line count."""
    sentences, words, tags, first = [], [], [], 0

    def flush():
        if words:
            sentences.append(Sentence(list(words), list(tags), first))
            words.clear(), tags.clear()

    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            flush()
            continue
        if line.startswith("#"):
            continue
        fields = line.rstrip("\r\n").split("\t")
        if len(fields) != 10:
            raise DataError(f"{path}:{number}: a CoNLL-U word line has 10 tab-separated columns, got {len(fields)}")
        if not fields[0].isdigit():
            continue
        if tagged and fields[3] in ("", "_"):
            raise DataError(f"{path}:{number}: the word {fields[1]!r} has no UPOS tag (column 4 is {fields[3]!r})")
        first = first if words else number
        words.append(fields[1])
        tags.extend([fields[3]] if tagged else [])
    flush()
    if not sentences:
        raise DataError(f"{path}: no sentences")
    return sentences


def split_paths(directory: str | Path, required: tuple[str, ...] = ("train", "validation")) -> dict[str, Path]:
    """The split files present in a CoNLL directory; the `required` ones must be there."""
    return find_splits(directory, SPLIT_FILES, "CoNLL", required)


def label_names(sentences: list[Sentence]) -> list[str]:
    """Label set from data: O first, then B-/I- pairs of each type, alphabetical (entity tags), or the plain
    tags sorted (O first when there is one)."""
    tags = {t for s in sentences for t in s.tags}
    if not is_entity_scheme(tags):
        return sorted(tags, key=lambda t: (t != "O", t))
    types = sorted({t[2:] for t in tags if t != "O"})
    return ["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")]
