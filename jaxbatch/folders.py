"""Output folders that never overwrite work (`compress` and `export` write them): an existing OUT that is
a file or holds anything is refused, and OUT is written as OUT.partial and renamed into place when
complete, so an interrupted write never leaves a half-written OUT that loads; a write that fails (a full disk)
is one line naming the file, the weights file's included (`save_safetensors`)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from jaxbatch.errors import ConfigError, writing


def check_new(out: str | Path) -> Path:
    """Refuses an `out` that is a file or a folder holding anything (callers check before the work, too)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a folder; choose a new output folder (nothing was overwritten)")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not empty; choose a new output folder (nothing was overwritten)")
    return out


@contextlib.contextmanager
def new_folder(out: str | Path) -> Iterator[Path]:
    """Yields the folder to write into; on success it becomes `out`, on an error it is removed."""
    out = check_new(out)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        with writing(out):  # a full disk is one line naming `out`
            partial.mkdir(parents=True)
            yield partial
            if out.exists():
                out.rmdir()
            os.replace(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def save_safetensors(tensors: dict, path: Path, metadata: dict | None = None) -> None:
    """A weights file; safetensors reports a failed write (a full disk) as its own error, "... (os error 28)",
    which becomes the OSError it was, so `new_folder` names the file in one line."""
    from safetensors.numpy import save_file

    try:
        save_file(tensors, str(path), metadata=metadata)
    except Exception as e:
        code = re.search(r"os error (\d+)", str(e))
        if code is None:
            raise
        raise OSError(int(code[1]), os.strerror(int(code[1])), str(path)) from e
