"""Sequence-classification TSV files: `text<TAB>label` rows, any number of classes.

A header row is optional (`sentence<TAB>label` as in GLUE, or `text<TAB>label`); an unlabelled split
(GLUE's test) has the layout `index<TAB>sentence`. Labels are kept as written (a class name or an
integer id) and turned into ids by `data/tasks.py` against the label set.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from jaxbatch.data.files import DataError, find_splits, read_text_file

SPLIT_FILES = {"train": ("train.tsv",), "validation": ("dev.tsv", "valid.tsv", "validation.tsv"),
               "test": ("test.tsv",)}
LABELLED_HEADERS = (["sentence", "label"], ["text", "label"])
UNLABELLED_HEADER = ["index", "sentence"]


@dataclasses.dataclass
class Example:
    text: str
    label: str  # as written in the file; "" for an unlabelled split


def read(path: str | Path) -> list[Example]:
    path = Path(path)
    lines = read_text_file(path).splitlines()
    first = [c.strip() for c in lines[0].split("\t")]
    text_col, label_col, skip = 0, 1, 0
    if first in LABELLED_HEADERS:
        skip = 1
    elif first == UNLABELLED_HEADER:
        text_col, label_col, skip = 1, None, 1
    elif len(first) != 2:
        raise DataError(f"{path}:1: expected 'text<TAB>label' (2 tab-separated columns, optional header "
                        f"'sentence<TAB>label'), got {len(first)} column(s): {lines[0]!r}")
    out = []
    for number, line in enumerate(lines[skip:], start=skip + 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise DataError(f"{path}:{number}: expected 2 tab-separated columns, got {len(parts)}")
        label = "" if label_col is None else parts[label_col].strip()
        if label_col is not None and not label:
            raise DataError(f"{path}:{number}: empty label")
        if not parts[text_col].strip():
            raise DataError(f"{path}:{number}: empty text")
        out.append(Example(parts[text_col].strip(), label))
    if not out:
        raise DataError(f"{path}: no examples{' after the header' if skip else ''}")
    return out


def split_paths(directory: str | Path, required: tuple[str, ...] = ("train", "validation")) -> dict[str, Path]:
    return find_splits(directory, SPLIT_FILES, "TSV", required)


def label_names(examples: list[Example]) -> list[str]:
    """Label set from data: integer ids in numeric order (their names are the ids), else names sorted."""
    found = {e.label for e in examples if e.label}
    if all(x.lstrip("-").isdigit() for x in found):
        return [str(i) for i in range(max(int(x) for x in found) + 1)]
    return sorted(found)
