"""data/files.py: a file is read once, as UTF-8, from a pipe as from disk; what is not a readable file is one
DataError naming it."""

import os
import threading

import pytest

from jaxbatch.data import files
from jaxbatch.errors import DataError


def test_a_pipe_is_read_like_a_file(tmp_path):
    """`--input <(zcat words.txt.gz)`: the shell passes a pipe, which exists but is not a regular file."""
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    writer = threading.Thread(target=lambda: pipe.write_bytes("\ufeffJohn lives in Paris\n".encode()))
    writer.start()
    assert files.read_text_file(pipe) == "John lives in Paris\n"
    writer.join()


@pytest.mark.parametrize("name, message", [("missing.txt", "missing.txt: no such file"),
                                           (".", ": is a folder, not a file")])
def test_what_is_not_a_file_is_named(tmp_path, name, message):
    with pytest.raises(DataError, match=message):
        files.read_text_file(tmp_path / name)


def test_a_file_that_cannot_be_read_is_named(tmp_path, monkeypatch):
    """No permission (which root, running these tests, always has) or an I/O error: one line naming the file."""
    def locked(path, *mode):
        raise PermissionError(13, "Permission denied", str(path))

    (tmp_path / "locked.txt").write_text("x")
    monkeypatch.setattr(files, "open", locked, raising=False)  # the module's reads open the file
    with pytest.raises(DataError, match=r"locked.txt: cannot read \(Permission denied\)$"):
        files.read_text_file(tmp_path / "locked.txt")


def _outcome(read):
    """What `read()` gives, or its DataError's message."""
    try:
        return read()
    except DataError as e:
        return f"error: {e}"


def test_text_read_in_pieces_is_the_text_read_whole_with_the_same_errors(tmp_path):
    """text_pieces (a corpus file read a block at a time; read_text_file joins its pieces) gives the text of the
    bytes decoded at once, or fails with its message (the same line and byte for text that is not UTF-8, a
    character cut across blocks, a byte-order mark, an empty file), for 1,500 random files in blocks of 1-7 bytes."""
    import random

    rng = random.Random(1)
    chunks = [b"a", b"\n", b" ", "é".encode(), "€".encode(), "😀".encode(), b"\xff", b"\xe2\x82", b"\xef\xbb\xbf",
              b"\r\n", b"\x80"]
    path = tmp_path / "t.txt"
    for case in range(1500):
        raw = b"".join(rng.choice(chunks) for _ in range(rng.randint(0, 30)))
        if case % 3 == 0:  # valid UTF-8 mostly
            raw = raw.replace(b"\xff", b"").replace(b"\x80", b"").replace(b"\xe2\x82", b"")
        path.write_bytes(raw)
        empty_ok = case % 2 == 0

        whole = _outcome(lambda: files.decode(raw, path))  # the bytes decoded at once
        if not whole.startswith("error") and not whole.strip() and not empty_ok:
            whole = f"error: {path}: file is empty"
        assert _outcome(lambda: files.read_text_file(path, empty_ok)) == whole, (case, raw)
        pieces = _outcome(lambda: "".join(files.text_pieces(path, empty_ok, block=rng.randint(1, 7))))
        assert pieces == whole, (case, raw)


def test_json_lines_read_in_pieces_are_those_of_the_whole_text(tmp_path):
    """json_records (a .jsonl corpus read a block at a time) gives json_lines' records of the whole text, or its
    error, whatever the line breaks (\\r\\n cut between blocks, \\r, the separators str.splitlines knows) and
    wherever the blocks end: 1,500 random files."""
    import random

    rng = random.Random(3)
    parts = ['{"text": "a b"}', '{"Text": "x"}', "[1]", '"s"', "{bad", "", "  ", '{"prompt": "p", "completion": " c"}']
    path = tmp_path / "c.jsonl"
    for case in range(1500):
        text = "".join(rng.choice(parts) + rng.choice(["\n", "\r\n", "\r", "\x1c", "\u2028", "\n\n"])
                       for _ in range(rng.randint(0, 8)))
        path.write_bytes(text.encode())

        whole = _outcome(lambda: files.json_lines(path, files.read_text_file(path, case % 2 == 0)))
        pieces = _outcome(lambda: list(files._json_rows(path, files._lines(
            files.text_pieces(path, case % 2 == 0, block=rng.randint(1, 9))))))
        assert pieces == whole, (case, text)


def test_parquet_records_read_in_batches_are_those_of_the_whole_table(tmp_path):
    """parquet_records (a .parquet corpus read a batch of rows at a time) gives the whole table's rows, numbered
    from 1 with lower-cased keys, whatever the row groups and batches (nulls, lists, no rows): 300 random files."""
    import random

    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(5)
    path = tmp_path / "c.parquet"
    for case in range(300):
        n = rng.choice([0, 1, rng.randint(2, 40)])
        table = pa.table({" Text": [rng.choice(["a b", "", None, "é\n"]) for _ in range(n)],
                          "ids": [[rng.randint(0, 9)] * rng.randint(0, 3) for _ in range(n)]})
        pq.write_table(table, path, row_group_size=rng.randint(1, 12))
        empty_ok = case % 2 == 0

        whole = [(i, {"text": row[" Text"], "ids": row["ids"]}) for i, row in enumerate(table.to_pylist(), start=1)]
        expected = whole if whole or empty_ok else f"error: {path}: no rows"
        assert _outcome(lambda: list(files.parquet_records(path, empty_ok, batch=rng.randint(1, 7)))) == expected
        assert _outcome(lambda: files.records(path, empty_ok)[0]) == expected, case


def test_a_damaged_row_group_is_named_when_the_read_reaches_it(tmp_path):
    """Rows are read as they are asked for: a file whose last row group is damaged gives its first rows, then
    one DataError naming the file (not an Arrow traceback)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": [f"document {i}" for i in range(30)]}), path, row_group_size=10)
    chunk = pq.ParquetFile(path).metadata.row_group(2).column(0)
    raw = bytearray(path.read_bytes())
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    raw[start:start + chunk.total_compressed_size] = b"\xff" * chunk.total_compressed_size
    path.write_bytes(bytes(raw))

    rows = files.parquet_records(path, batch=5)
    assert [next(rows)[1]["text"] for _ in range(20)] == [f"document {i}" for i in range(20)]
    with pytest.raises(DataError, match=r"c.parquet: not a readable Parquet file"):
        list(rows)
