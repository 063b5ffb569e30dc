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
    from pathlib import Path

    def locked(self):
        raise PermissionError(13, "Permission denied", str(self))

    (tmp_path / "locked.txt").write_text("x")
    monkeypatch.setattr(Path, "read_bytes", locked)
    with pytest.raises(DataError, match=r"locked.txt: cannot read \(Permission denied\)$"):
        files.read_text_file(tmp_path / "locked.txt")
