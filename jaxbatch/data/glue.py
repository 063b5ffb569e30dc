"""GLUE SST-2 TSV files: `sentence<TAB>label` with a header (train, dev) and `index<TAB>sentence` (test)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from jaxbatch.data.files import DataError, find_splits, read_text_file

SPLIT_FILES = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}
LABEL_NAMES = ["negative", "positive"]


@dataclasses.dataclass
class Example:
    text: str
    label: int  # -1 for the unlabelled test split


def read(path: str | Path) -> list[Example]:
    path = Path(path)
    lines = read_text_file(path).splitlines()
    header = lines[0].split("\t")
    if header == ["sentence", "label"]:
        text_col, label_col = 0, 1
    elif header == ["index", "sentence"]:
        text_col, label_col = 1, None
    else:
        raise DataError(f"{path}:1: header {lines[0]!r} is neither 'sentence<TAB>label' nor 'index<TAB>sentence'")
    out = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != len(header):
            raise DataError(f"{path}:{number}: expected {len(header)} tab-separated columns, got {len(parts)}")
        label = -1
        if label_col is not None:
            if parts[label_col].strip() not in ("0", "1"):
                raise DataError(f"{path}:{number}: label {parts[label_col]!r} is not 0 or 1")
            label = int(parts[label_col])
        out.append(Example(parts[text_col].strip(), label))
    if not out:
        raise DataError(f"{path}: no examples after the header")
    return out


def split_paths(directory: str | Path) -> dict[str, Path]:
    return find_splits(directory, {s: (n,) for s, n in SPLIT_FILES.items()}, "SST-2")
