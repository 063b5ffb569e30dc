"""CoNLL-2003 NER files: `word POS chunk NER` (4 columns) or `word NER` (2 columns), blank-line separated
sentences, `-DOCSTART-` lines anywhere, with or without a final newline. Tags are returned in IOB2."""

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


def _check_tag(tag: str, where: str) -> None:
    if tag != "O" and not (len(tag) > 2 and tag[:2] in ("B-", "I-")):
        raise DataError(f"{where}: tag {tag!r} is not O, B-TYPE or I-TYPE")


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
        if len(parts) not in (2, 4):
            raise DataError(f"{where}: expected 4 columns (word POS chunk NER) or 2 (word NER), got {len(parts)}: "
                            f"{line!r}")
        if columns is None:
            columns = len(parts)
        elif len(parts) != columns:
            raise DataError(f"{where}: {len(parts)} columns, but the file started with {columns}")
        _check_tag(parts[-1], where)
        first = first if words else number
        words.append(parts[0])
        tags.append(parts[-1])
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
