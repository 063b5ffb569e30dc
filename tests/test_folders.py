"""Output folders: existing work is refused, and an interrupted write leaves neither OUT nor its temporary."""

import os

import pytest

from jaxbatch import folders
from jaxbatch.errors import ConfigError, WriteError


def test_a_complete_write_lands_and_existing_work_is_refused(tmp_path):
    out = tmp_path / "sub" / "out"
    with folders.new_folder(out) as partial:
        assert partial != out and not out.exists()
        (partial / "weights").write_bytes(b"w")
    assert sorted(p.name for p in tmp_path.joinpath("sub").iterdir()) == ["out"]
    assert (out / "weights").read_bytes() == b"w"
    with pytest.raises(ConfigError, match="exists and is not empty"), folders.new_folder(out):
        pass
    (tmp_path / "file").write_text("keep")
    with pytest.raises(ConfigError, match="exists and is not a folder"):
        folders.check_new(tmp_path / "file")
    assert (out / "weights").read_bytes() == b"w" and (tmp_path / "file").read_text() == "keep"
    (tmp_path / "empty").mkdir()
    with folders.new_folder(tmp_path / "empty") as partial:  # an empty folder is taken
        (partial / "a").write_text("a")
    assert (tmp_path / "empty" / "a").read_text() == "a"


def test_an_interrupted_write_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    (tmp_path / "out.partial").mkdir()  # a stale temporary from a killed run
    (tmp_path / "out.partial" / "stale").write_text("x")
    with pytest.raises(KeyboardInterrupt), folders.new_folder(out) as partial:
        assert not (partial / "stale").exists()
        (partial / "half").write_text("h")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_is_one_error_naming_the_output_and_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(WriteError, match=rf"^{out}: cannot write \(No space left on device\)$"):
        with folders.new_folder(out) as partial:
            (partial / "weights").symlink_to("/dev/full")  # its writes fail with ENOSPC, as a full disk's do
            (partial / "weights").write_bytes(b"w" * 4096)
    assert list(tmp_path.iterdir()) == []


def test_weights_that_meet_a_full_disk_are_one_error_and_leave_nothing(tmp_path, monkeypatch):
    """safetensors reports a failed write as its own error ("... (os error 28)"): `export` names the file in one
    line, as for any other write, instead of a traceback."""
    import numpy as np
    import safetensors.numpy
    from safetensors import SafetensorError

    from jaxbatch import hf

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.numpy, "save_file", full)
    out = tmp_path / "out"
    with pytest.raises(WriteError, match=r"out.partial/model.safetensors: cannot write \(No space left on device\)$"):
        with folders.new_folder(out) as partial:
            hf.save_tensors({"w": np.ones(3, np.float32)}, partial / "model.safetensors")
    assert list(tmp_path.iterdir()) == []
