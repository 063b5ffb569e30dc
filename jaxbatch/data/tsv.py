"""Sequence-classification files, any number of classes, single texts or text pairs: `text<TAB>label` TSV,
a TSV, CSV or JSON lines file whose header (keys) names its columns.

Headerless TSV: `text<TAB>label`. Named columns (a TSV header row as GLUE's, CSV as pandas or a spreadsheet
writes it, quoted fields included, `;`-separated too, or the keys of JSON lines): the text in `text` or
`sentence`, or a pair of texts (GLUE's and NLI's names: `sentence1`/`sentence2`, `premise`/`hypothesis`,
`question`/`sentence`, `question1`/`question2`, or `text`/`text_pair`), the class in `label` or `labels` (or a
regression target in `label` or `score`, GLUE STS-B's; names in any case); other columns are ignored (GLUE's
`index`), and a split without a label column is unlabelled. A multi-label example's classes are a JSON list
(`"labels": ["sports", "politics"]`, `[]` for none, as GoEmotions is stored) or, in any file, written
comma-separated; a JSON list of numbers may instead be the scores of a head with several outputs (a
multi-output regression). Labels are kept as written (a class name, an integer id, a score, or a list of
classes or scores) and turned into ids, indicators or scores by `data/tasks.py`.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from jaxbatch.data.files import RECORD_SUFFIXES, DataError, find_splits, place, read_text_file, records

SPLIT_FILES = {split: tuple(f"{name}{ext}" for ext in (".tsv", ".csv", ".jsonl", ".json", ".parquet", "-*.parquet",
                                                       "/*.parquet") for name in names)  # *: the HF hub's shards
               for split, names in {"train": ("train",), "validation": ("dev", "valid", "validation"),
                                    "test": ("test",)}.items()}
PAIR_COLUMNS = (("sentence1", "sentence2"), ("premise", "hypothesis"), ("question", "sentence"),
                ("question1", "question2"), ("text", "text_pair"))  # tried first, in order
TEXT_COLUMNS = ("text", "sentence")
LABEL_COLUMNS = ("label", "labels", "score")  # the first one present
DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab"}  # of CSV, in the order tried


@dataclasses.dataclass
class Example:
    text: str
    label: str | tuple[str, ...]  # as written in the file ("" for an unlabelled split); a JSON list: a tuple
    line: int = 0  # its line in the file (a quoted CSV field may span lines: the last); 0 when not from a file
    text_pair: str = ""  # the second text of a pair ("" for a single text)


def read(path: str | Path) -> list[Example]:
    path = Path(path)
    if path.suffix == ".csv":
        return _read_csv(path)
    if path.suffix in RECORD_SUFFIXES:
        return _read_records(path)
    text = read_text_file(path)
    lines = text.splitlines()
    first = [c.strip().lower() for c in lines[0].split("\t")]  # a `Text<TAB>Label` header is a header too
    if _names_text(first):
        return _read_named(path, text, "\t")
    if len(first) != 2:
        raise DataError(f"{path}:1: expected 'text<TAB>label' (2 tab-separated columns) or a header naming the "
                        f"columns ('sentence<TAB>label', 'sentence1<TAB>sentence2<TAB>label', ...), got "
                        f"{len(first)} column(s): {lines[0]!r}")
    out = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise DataError(f"{path}:{number}: expected 2 tab-separated columns, got {len(parts)}")
        out.append(_example(path, number, {"text": parts[0], "label": parts[1]}, ("text", None), "label"))
    return out


def _names_text(names) -> bool:
    return any(c in names for c in TEXT_COLUMNS) or any(set(pair) <= set(names) for pair in PAIR_COLUMNS)


def _example(path: Path, number: int, row: dict, columns: tuple[str, str | None],
             label_column: str | None) -> Example:
    texts = [row.get(c) for c in columns if c]
    for column, text in zip(columns, texts):
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{place(path, number)}: {column!r} must be a non-empty string, got {text!r}")
    label = row.get(label_column) if label_column else ""
    if isinstance(label, list):  # a multi-label example's classes, or a multi-output regression's scores
        wrong = [y for y in label if isinstance(y, bool) or not isinstance(y, (str, int, float)) or not str(y).strip()
                 or (isinstance(y, float) and not math.isfinite(y))]
        if wrong:
            raise DataError(f"{place(path, number)}: the {label_column} list must hold class names, integer ids or "
                            f"scores, got {wrong[0]!r}")
        label = tuple(str(y).strip() for y in label)
        return Example(texts[0].strip(), label, number, texts[1].strip() if len(texts) > 1 else "")
    bad = isinstance(label, bool) or not isinstance(label, (str, int, float)) or not str(label).strip()
    if label_column and bad:
        raise DataError(f"{place(path, number)}: the {label_column} must be a class name, an integer id, a score or a "
                        f"list of classes, got {label!r}")
    return Example(texts[0].strip(), str(label).strip(), number,
                   texts[1].strip() if len(texts) > 1 else "")


def _columns(path: Path, names) -> tuple[tuple[str, str | None], str | None]:
    """The text column (and the pair's second, or None) and the label column (None: unlabelled)."""
    pair = next((p for p in PAIR_COLUMNS if set(p) <= set(names)), None)
    text_col = next((c for c in TEXT_COLUMNS if c in names), None)
    if pair is None and text_col is None:
        raise DataError(f"{path}:1: no 'text' or 'sentence' column, nor a pair of texts ("
                        f"{', '.join('/'.join(p) for p in PAIR_COLUMNS)}); the columns are {sorted(names)}")
    return pair or (text_col, None), next((c for c in LABEL_COLUMNS if c in names), None)


def _delimiter(header: str) -> str:
    """',' unless the header names a text column only when split at ';' (what spreadsheets write where the
    decimal mark is a comma) or at a tab."""
    for d in DELIMITERS:
        if _names_text([c.strip().strip('"').lower() for c in header.split(d)]):
            return d
    return ","


def _read_csv(path: Path) -> list[Example]:
    text = read_text_file(path)
    return _read_named(path, text, _delimiter(text.split("\n", 1)[0]))


def _read_named(path: Path, text: str, delimiter: str) -> list[Example]:
    """Rows of a file whose header names its columns. A TSV's quotes are text (GLUE's are: a premise may
    start with one); a CSV's quote fields, and a quoted field may span lines: a row is named by the line it
    starts on, where an editor shows it."""
    import csv
    import io

    quoting = csv.QUOTE_NONE if path.suffix == ".tsv" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    start = 1
    try:
        names = [c.strip().lower() for c in next(reader, [])]  # `Text,Label` names them too
        columns, label_column = _columns(path, names)
        out, start = [], reader.line_num + 1
        while (values := next(reader, None)) is not None:
            if len(values) != len(names) and values:
                raise DataError(f"{path}:{start}: expected {len(names)} "
                                f"{DELIMITERS[delimiter]}-separated columns like the header")
            if any(v.strip() for v in values):
                out.append(_example(path, start, dict(zip(names, values)), columns, label_column))
            start = reader.line_num + 1
    except csv.Error as e:
        raise DataError(f"{path}:{start}: {e}") from e
    if not out:
        raise DataError(f"{path}: no examples after the header")
    return out


def _read_records(path: Path) -> list[Example]:
    """JSON lines or Parquet; a label that is a ClassLabel id (or a list of them) of a `datasets` Parquet file
    is read by its class name, and its -1 (a hidden label: GLUE's test splits) as no label."""
    rows, class_names = records(path)
    columns, label_column = _columns(path, rows[0][1].keys())
    names = class_names.get(label_column or "", [])
    out = []
    for number, row in rows:
        if any(c and c not in row for c in columns) or label_column != _columns(path, row.keys())[1]:
            keys = " and ".join(repr(c) for c in (*columns, label_column) if c)
            first = f"{'row' if path.suffix == '.parquet' else 'line'} {rows[0][0]}"
            raise DataError(f"{place(path, number)}: expected the keys of {first} ({keys})")
        hidden = bool(names) and row[label_column] == -1
        if names and not hidden:
            row[label_column] = _class_name(row[label_column], names, place(path, number))
        out.append(_example(path, number, row, columns, None if hidden else label_column))
    return out


def _class_name(label, names: list[str], where: str):
    """A ClassLabel id (or list of ids) by name."""
    if isinstance(label, list):
        return [_class_name(y, names, where) for y in label]
    if not isinstance(label, int) or isinstance(label, bool):
        return label
    if not 0 <= label < len(names):
        raise DataError(f"{where}: label id {label} is not one of its {len(names)} class names {names}")
    return names[label]


def split_paths(directory: str | Path, required: tuple[str, ...] = ("train", "validation")) -> dict[str, Path]:
    return find_splits(directory, SPLIT_FILES, "text-classification (tsv, csv, jsonl)", required)


def label_names(labels: list[str]) -> list[str]:
    """Label set from the classes the data names: integer ids in numeric order (their names are the ids),
    else names sorted."""
    found = {y for y in labels if y}
    if found and all(x.lstrip("-").isdigit() for x in found):
        return [str(i) for i in range(max(int(x) for x in found) + 1)]
    return sorted(found)
