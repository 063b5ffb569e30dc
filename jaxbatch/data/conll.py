"""CoNLL-format tagging files: the word in the first column and its tag in the last, any number of columns
between (CoNLL-2003's `word POS chunk NER`, CoNLL-2002 Dutch's `word POS NER`, CoNLL-2000's `word POS chunk`,
plain `word NER`), blank-line separated sentences, `-DOCSTART-` lines anywhere, with or without a final
newline. Tags may be IOB1, IOB2, IOBES or BILOU; they are returned in IOB2, which spans the same entities."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from jaxbatch.errors import DataError
from jaxbatch.data.files import find_splits, read_text_file

SPLIT_FILES = {  # split -> candidate file names, first found wins
    "train": ("eng.train", "train.txt"),
    "validation": ("eng.testa", "valid.txt", "dev.txt"),
    "test": ("eng.testb", "test.txt"),
}


@dataclasses.dataclass
class Sentence:
    words: list[str]
    tags: list[str]
    line: int = 0  # the file line of its first word (its k-th word is on line + k); 0 when not from a file


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


def _iob_tag(tag: str, where: str) -> str:
    """The tag in IOB (a single- or last-token prefix becomes B- or I-: the same entity spans)."""
    if tag == "O":
        return tag
    if not (len(tag) > 2 and tag[:2] in TO_IOB):
        raise DataError(f"{where}: tag {tag!r} is not O or PREFIX-TYPE with a prefix of {', '.join(TO_IOB)}")
    return TO_IOB[tag[:2]] + tag[2:]


def read(path: str | Path) -> list[Sentence]:
    """Sentences of one file, IOB2. Errors name the file and line."""
    path = Path(path)
    text = read_text_file(path)
    sentences, words, tags, columns, first = [], [], [], None, 0

    def flush():
        if words:
            sentences.append(Sentence(list(words), iob1_to_iob2(list(tags)), first))
            words.clear()
            tags.clear()

    for number, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            flush()
            continue
        if parts[0] == "-DOCSTART-":
            flush()
            continue
        where = f"{path}:{number}"
        if len(parts) < 2:
            raise DataError(f"{where}: expected the word, optional columns, then its tag; got one column: {line!r}")
        if columns is None:
            columns = len(parts)
        elif len(parts) != columns:
            raise DataError(f"{where}: {len(parts)} columns, but the file started with {columns}")
        first = first if words else number
        words.append(parts[0])
        tags.append(_iob_tag(parts[-1], where))
    flush()
    if not sentences:
        raise DataError(f"{path}: no sentences (only -DOCSTART- or blank lines)")
    return sentences


def split_paths(directory: str | Path, required: tuple[str, ...] = ("train", "validation")) -> dict[str, Path]:
    """The split files present in a CoNLL directory; the `required` ones must be there."""
    return find_splits(directory, SPLIT_FILES, "CoNLL", required)


def label_names(sentences: list[Sentence]) -> list[str]:
    """Label set from data: O first, then B-/I- pairs of each type, alphabetical."""
    types = sorted({t[2:] for s in sentences for t in s.tags if t != "O"})
    return ["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")]
