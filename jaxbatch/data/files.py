"""Reading dataset files: UTF-8 text whose errors name the file and line, JSON lines and Parquet records, and
finding split files in a directory."""

from jaxbatch.errors import DataError, MissingSplit

JSON_SUFFIXES = (".jsonl", ".json")  # JSON lines: `Dataset.to_json` writes them under whichever name it is given
RECORD_SUFFIXES = (*JSON_SUFFIXES, ".parquet")  # files of records (objects with named fields), not of lines


# a split's shards (`train-*.parquet`) -> [(shard, its rows)], as `records` last read them: `place` is called for
# every row as it is read, and reading each shard's footer there would cost more than the read
_SHARD_ROWS: dict[str, list[tuple[object, int]]] = {}


def place(path, number: int) -> str:
    """Where record `number` of a file is, for a message: its line (`train.txt:12`), or a Parquet file's row
    (`train.parquet, row 12`: a binary file has no lines); of a split's shards, numbered across them, the
    shard and its own row (`train-00001-of-00002.parquet, row 3`)."""
    if not str(path).endswith(".parquet"):
        return f"{path}:{number}"
    if "*" in str(path):
        for shard, rows in _shard_rows(path):
            if number <= rows:
                return f"{shard}, row {number}"
            number -= rows
    return f"{path}, row {number}"


def _shard_rows(path) -> list[tuple[object, int]]:
    """[(shard, its rows)] of a split's shards: as `records` read them, else (a split prepared by an earlier
    run, named in a later message) from each shard's footer."""
    if str(path) in _SHARD_ROWS:
        return _SHARD_ROWS[str(path)]
    import pyarrow
    import pyarrow.parquet as pq

    try:
        return [(shard, pq.ParquetFile(shard).metadata.num_rows) for shard in shards(path)]
    except (pyarrow.ArrowException, OSError):  # changed since: the row counted across shards
        return []


def read_text_file(path, empty_ok: bool = False) -> str:
    """Reads UTF-8 text (without a leading byte-order mark); a missing file or another encoding becomes a
    DataError naming the file and byte, and so does an empty file unless `empty_ok` (one file of a corpus
    folder may hold nothing). Read once, front to back: a pipe (`--input <(zcat x.gz)`) can be read only once."""
    return "".join(text_pieces(path, empty_ok))


def text_pieces(path, empty_ok: bool = False, block: int = 16 << 20):
    """A file's UTF-8 text (without a leading byte-order mark) in pieces, `block` bytes read at a time (a file of
    any size in constant memory); a missing file or another encoding is a DataError naming the file, line and byte
    (as `decode`'s), and so is an empty file, at its end, unless `empty_ok`."""
    import codecs
    from pathlib import Path

    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a file")
    if not path.exists():
        raise DataError(f"{path}: no such file")
    decoder, offset, lines, started, seen = codecs.getincrementaldecoder("utf-8")(), 0, 0, False, False
    try:
        with open(path, "rb") as f:
            while True:
                raw = f.read(block)
                held = len(decoder.getstate()[0])  # an unfinished character's bytes, from the block before
                try:
                    text = decoder.decode(raw, final=not raw)
                except UnicodeDecodeError as e:  # e.object: the held bytes, then raw
                    line = lines + e.object[held: max(e.start, held)].count(b"\n") + 1
                    raise _not_utf8(path, line, e.object[e.start], offset - held + e.start) from e
                if text and not started:  # the text's first character
                    text, started = text.removeprefix("\ufeff"), True
                seen = seen or bool(text.strip())
                offset, lines = offset + len(raw), lines + raw.count(b"\n")
                if not raw:
                    break
                yield text
    except OSError as e:  # no permission, an I/O error
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
    if not seen and not empty_ok:
        raise DataError(f"{path}: file is empty")


def decode(raw: bytes, where) -> str:
    """UTF-8 text without a leading byte-order mark (Windows editors, spreadsheet exports); another encoding is a
    DataError naming `where` (a file, standard input), the line and the byte."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _not_utf8(where, raw[: e.start].count(b"\n") + 1, raw[e.start], e.start) from e
    return text.removeprefix("\ufeff")


def _not_utf8(where, line: int, byte: int, offset: int) -> DataError:
    return DataError(f"{where}:{line}: not UTF-8 (byte {byte:#x} at offset {offset}); re-encode the text as UTF-8")


def json_lines(path, text: str) -> list[tuple[int, dict]]:
    """(line number, object with lower-cased keys) for each non-blank line of a JSON lines file's `text`;
    anything but an object is a DataError naming the line (a whole-file JSON array: the file)."""
    return list(_json_rows(path, text.splitlines()))


def json_records(path, empty_ok: bool = False):
    """json_lines of a file read a block at a time (text_pieces), as an iterator: a file of any size."""
    return _json_rows(path, text_lines(path, empty_ok))


def text_lines(path, empty_ok: bool = False):
    """A file's lines (as str.splitlines gives them) read a block at a time: a file of any size."""
    return _lines(text_pieces(path, empty_ok))


def _json_rows(path, lines):
    import json

    first = True
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if first and line.lstrip().startswith("["):  # the text's first character
            raise DataError(f"{path}: holds one JSON array; write one object per line (JSON lines, as `datasets`' "
                            f"Dataset.to_json and pandas' to_json(lines=True) do)")
        first = False
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{number}: not a JSON object ({e.msg})") from e
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: not a JSON object")
        yield number, {k.strip().lower(): v for k, v in row.items()}  # `Text` names the text too


def _lines(pieces):
    """The lines of a text given in pieces, as str.splitlines gives those of the whole text."""
    rest = ""
    for piece in pieces:
        lines = (rest + piece).splitlines(keepends=True)
        rest = lines.pop() if lines else ""  # unfinished, or a "\r" whose "\n" may begin the next piece
        yield from (line.splitlines()[0] for line in lines)
    yield from rest.splitlines()


def records(path, empty_ok: bool = False) -> tuple[list[tuple[int, dict]], dict[str, list[str]]]:
    """A JSON lines or Parquet file's records: (line or row number from 1, record with lower-cased keys), and
    the class names of its ClassLabel columns, as `datasets` keeps them in a Parquet file's schema ({column:
    names in id order}; none for JSON lines). No records is an error unless `empty_ok` (read_text_file)."""
    from pathlib import Path

    path = Path(path)
    if path.suffix != ".parquet":
        return list(json_records(path, empty_ok)), {}
    if "*" in path.name:  # a split's shards (find_splits): rows numbered across them, in name order
        rows, names, counts = [], {}, []
        for shard in shards(path):
            part, shard_names = records(shard, empty_ok=True)
            rows += [(len(rows) + n, row) for n, row in part]
            names = names or shard_names
            counts.append((shard, len(part)))
        _SHARD_ROWS[str(path)] = counts
        if not rows and not empty_ok:
            raise DataError(f"{path}: no rows")
        return rows, names
    import pyarrow.parquet as pq

    rows = list(parquet_records(path, empty_ok))
    return rows, _class_names(path, (pq.read_schema(path).metadata or {}).get(b"huggingface"))


def parquet_records(path, empty_ok: bool = False, batch: int = 4096):
    """A Parquet file's records as `records` gives them, as an iterator reading `batch` rows at a time (a file of
    any size: a row group's columns and a batch's Python objects in memory, not the whole table's)."""
    import pyarrow
    import pyarrow.parquet as pq
    from pathlib import Path

    if not Path(path).is_file():
        raise DataError(f"{path}: no such file")
    number = 0
    try:
        for rows in pq.ParquetFile(path).iter_batches(batch_size=batch):
            for row in rows.to_pylist():
                number += 1
                yield number, {k.strip().lower(): v for k, v in row.items()}
    except (pyarrow.ArrowException, OSError) as e:  # a damaged footer, or a damaged row group as it is reached
        raise DataError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0] if str(e) else e!r})") from e
    if not number and not empty_ok:
        raise DataError(f"{path}: no rows")


def label_classes(path, label_columns: tuple[str, ...]) -> list[str]:
    """The ClassLabel names, in id order, of the column a reader takes labels from (the first of `label_columns`
    a Parquet file has); [] for other files or a column without them. Read from the schema alone."""
    from pathlib import Path

    if Path(path).suffix != ".parquet":
        return []
    import pyarrow
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(shards(path)[0])
    except (pyarrow.ArrowException, OSError, IndexError):
        return []  # the reader says what is wrong with the file
    columns = {n.strip().lower() for n in schema.names}
    column = next((c for c in label_columns if c in columns), None)
    return _class_names(path, (schema.metadata or {}).get(b"huggingface")).get(column or "", [])


def _class_names(path, metadata: bytes | None) -> dict[str, list[str]]:
    """{column: names} of `datasets`' ClassLabel features (of a value, or of each item of a list) in its
    schema metadata (`{"info": {"features": {...}}}`)."""
    import json

    if not metadata:
        return {}
    try:
        features = json.loads(metadata).get("info", {}).get("features", {})
    except (json.JSONDecodeError, AttributeError) as e:
        raise DataError(f"{path}: its `huggingface` schema metadata is not the JSON `datasets` writes") from e
    names = {}
    for column, feature in features.items():
        inner = feature.get("feature", feature) if isinstance(feature, dict) else {}
        if isinstance(inner, dict) and inner.get("_type") == "ClassLabel" and inner.get("names"):
            names[column.strip().lower()] = [str(n) for n in inner["names"]]
    return names


def shards(path) -> list:
    """The files a split's path stands for: the file, or each of the shards a pattern names (find_splits)."""
    from pathlib import Path

    path = Path(path)
    return sorted(p for p in path.parent.glob(path.name) if p.is_file()) if "*" in path.name else [path]


def _one_split(pattern: str, paths: list) -> bool:
    """Whether files a pattern matched are the shards of one split as the Hugging Face hub writes them: all of
    `train-00000-of-00003.parquet` to `-00002-of-00003`, or the Parquet files of a split's own folder."""
    import re

    if pattern.endswith("/*.parquet"):
        return True
    parts = [re.fullmatch(r"(.*)-(\d+)-of-(\d+)\.parquet", p.name) for p in paths]
    return all(parts) and len({(m[1], m[3]) for m in parts}) == 1 and sorted(int(m[2]) for m in parts) == list(
        range(int(parts[0][3])))


def find_splits(directory, candidates: dict[str, tuple[str, ...]], what: str,
                required: tuple[str, ...] = ("train", "validation")) -> dict:
    """{split: path} of the first candidate file name present for each split; `required` splits must exist.
    A candidate with `*` is a pattern (Universal Dependencies' `en_ewt-ud-train.conllu`), which must match one
    file, or the hub's Parquet shards of one split (the path is then the pattern: `shards`, `records`)."""
    from pathlib import Path

    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{what} directory {directory} does not exist")
    found = {}
    for split, names in candidates.items():
        for name in names:
            present = sorted(p for p in directory.glob(name) if p.is_file()) if "*" in name else [
                directory / name] if (directory / name).is_file() else []
            if len(present) > 1 and not _one_split(name, present):
                sharded = " file, or one whole set of shards NAME-00000-of-0000N.parquet" if ".parquet" in name else ""
                raise DataError(f"{directory}: {len(present)} {split} files match {name} "
                                f"({', '.join(p.name for p in present)}); keep one{sharded}")
            if present:
                found[split] = present[0] if len(present) == 1 else directory / name
                break
    for split in required:
        if split not in found:
            present = f"; found {', '.join(found)}" if found else ""
            raise MissingSplit(f"{directory}: no {split} file (looked for {', '.join(candidates[split])}){present}",
                               split)
    return found
