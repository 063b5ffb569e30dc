"""Sequence-classification files, any number of classes: `text<TAB>label` TSV, CSV with a header, or JSON
lines.

TSV: a header row is optional (`sentence<TAB>label` as in GLUE, or `text<TAB>label`); an unlabelled split
(GLUE's test) has the layout `index<TAB>sentence`. CSV (`train.csv`, as pandas or a spreadsheet writes it,
quoted fields included; `;`-separated too) and JSON lines (`train.jsonl`, one object per line) name their
columns: the text in `text` or `sentence`, the class in `label` (names in any case); other columns are ignored,
and a split without `label` is unlabelled. Labels are kept as written (a class name or an integer id) and
turned into ids by `data/tasks.py` against the label set.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from jaxbatch.data.files import DataError, find_splits, json_lines, read_text_file

SPLIT_FILES = {split: tuple(f"{name}.{ext}" for ext in ("tsv", "csv", "jsonl") for name in names)
               for split, names in {"train": ("train",), "validation": ("dev", "valid", "validation"),
                                    "test": ("test",)}.items()}
TEXT_COLUMNS = ("text", "sentence")
LABELLED_HEADERS = (["sentence", "label"], ["text", "label"])
UNLABELLED_HEADER = ["index", "sentence"]
DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab"}  # of CSV, in the order tried


@dataclasses.dataclass
class Example:
    text: str
    label: str  # as written in the file; "" for an unlabelled split
    line: int = 0  # its line in the file (a quoted CSV field may span lines: the last); 0 when not from a file


def read(path: str | Path) -> list[Example]:
    path = Path(path)
    if path.suffix == ".csv":
        return _read_csv(path)
    if path.suffix == ".jsonl":
        return _read_jsonl(path)
    lines = read_text_file(path).splitlines()
    first = [c.strip().lower() for c in lines[0].split("\t")]  # a `Text<TAB>Label` header is a header too
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
        out.append(Example(parts[text_col].strip(), label, number))
    if not out:
        raise DataError(f"{path}: no examples{' after the header' if skip else ''}")
    return out


def _example(path: Path, number: int, text, label, labelled: bool) -> Example:
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{path}:{number}: the text must be a non-empty string, got {text!r}")
    if labelled and (isinstance(label, bool) or not isinstance(label, (str, int)) or not str(label).strip()):
        raise DataError(f"{path}:{number}: the label must be a class name or an integer id, got {label!r}")
    return Example(text.strip(), str(label).strip() if labelled else "", number)


def _columns(path: Path, names) -> tuple[str, bool]:
    """The text column's name and whether there is a label column."""
    text_col = next((c for c in TEXT_COLUMNS if c in names), None)
    if text_col is None:
        raise DataError(f"{path}:1: no 'text' or 'sentence' column (the columns are {sorted(names)})")
    return text_col, "label" in names


def _delimiter(header: str) -> str:
    """',' unless the header names a text column only when split at ';' (what spreadsheets write where the
    decimal mark is a comma) or at a tab."""
    for d in DELIMITERS:
        if any(c.strip().strip('"').lower() in TEXT_COLUMNS for c in header.split(d)):
            return d
    return ","


def _read_csv(path: Path) -> list[Example]:
    import csv
    import io

    text = read_text_file(path)
    delimiter = _delimiter(text.split("\n", 1)[0])
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    reader.fieldnames = [c.strip().lower() for c in reader.fieldnames or []]  # `Text,Label` names them too
    text_col, labelled = _columns(path, reader.fieldnames)
    out = []
    try:
        for row in reader:
            if None in row or any(v is None for v in row.values()):
                raise DataError(f"{path}:{reader.line_num}: expected {len(reader.fieldnames)} "
                                f"{DELIMITERS[delimiter]}-separated columns like the header")
            if any(v.strip() for v in row.values()):
                out.append(_example(path, reader.line_num, row[text_col], row.get("label"), labelled))
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: {e}") from e
    if not out:
        raise DataError(f"{path}: no examples after the header")
    return out


def _read_jsonl(path: Path) -> list[Example]:
    rows = json_lines(path, read_text_file(path))
    text_col, labelled = _columns(path, rows[0][1].keys())
    for number, row in rows:
        if text_col not in row or labelled != ("label" in row):
            raise DataError(f"{path}:{number}: expected the keys of line {rows[0][0]} "
                            f"({text_col!r}{' and label' if labelled else ''})")
    return [_example(path, n, row[text_col], row.get("label"), labelled) for n, row in rows]


def split_paths(directory: str | Path, required: tuple[str, ...] = ("train", "validation")) -> dict[str, Path]:
    return find_splits(directory, SPLIT_FILES, "text-classification (tsv, csv, jsonl)", required)


def label_names(examples: list[Example]) -> list[str]:
    """Label set from data: integer ids in numeric order (their names are the ids), else names sorted."""
    found = {e.label for e in examples if e.label}
    if all(x.lstrip("-").isdigit() for x in found):
        return [str(i) for i in range(max(int(x) for x in found) + 1)]
    return sorted(found)
