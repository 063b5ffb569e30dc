"""Tokenized text corpora kept on disk, as Hugging Face datasets keeps a `map`'s output and Levanter its token
cache: a corpus is tokenized once, and every later run on the same data and tokenizer (a resumed run, `evaluate`,
the next experiment) memory-maps the result instead of reading and tokenizing again (33 MB of text: 15.4 s each
start, then 0.33 s: benchmarks/token_cache.py). A language model's entry is its documents end to end (2 bytes a
token while ids fit in 16 bits) and where each begins, so rows of any length are computed from it as batches read
them (packing.Packed, packing.Grouped). Memory-mapped files are read as batches ask for them, so a split far larger
than memory costs the pages read only; a build keeps what it has read in scratch files (`Files.scratch`), so it
needs no more memory either.

An entry is a folder of .npy files under $JAXBATCH_CACHE/tokens, named by a hash of everything the rows depend
on (the prepared data's content hash, the split and its limits, the tokenizer's full definition, the layout and
FORMAT), written to a temporary folder and renamed into place whole, so a killed run leaves no half entry and
processes building the same entry at once keep one. Each file's CRC-32 is in the manifest and checked when the
entry is opened (~7 GB/s: a disk's flipped bit would otherwise train on wrong ids, silently); an entry that
cannot be read back, or whose contents changed, is built again; a cache that cannot be written (a full disk, a
read-only home, JAXBATCH_CACHE=off) costs the time only. Entries past TOKEN_CACHE_BYTES go, least recently used
first, when a new one is written, and entries of an older FORMAT (never read again) go then too."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import socket
import uuid
import zlib
from pathlib import Path
from typing import Callable

import numpy as np

from jaxbatch import cache

log = logging.getLogger(__name__)

FORMAT = 3  # bump when tokenizing or packing changes what an entry holds: older entries are then never read
TOKEN_CACHE_BYTES = 32 << 30
_MANIFEST = "arrays.json"
_TOLD: set[Path] = set()  # cache folders this process warned it cannot write


def folder() -> Path | None:
    base = cache.root()
    return base / "tokens" if base else None


def fingerprint(tokenizer) -> str | None:
    """Everything about a tokenizer that decides the ids it gives: a `tokenizers` tokenizer's whole definition
    (vocabulary, normalizer, pre-tokenizer, post-processor, added tokens), its special tokens and chat template,
    or a character vocabulary. None for a tokenizer that cannot be described so (a slow, Python one): its
    output is not cached."""
    chars = getattr(tokenizer, "chars", None)
    if chars is not None:
        return hashlib.sha1(json.dumps(["chars", chars]).encode()).hexdigest()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    # truncation and padding are set by each call (transformers resets them to the call's), so the state a
    # tokenizer file starts with (sentence-transformers': 128 tokens) and the last call left are not its ids'
    definition = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")}
    described = [type(tokenizer).__name__, definition, str(tokenizer.special_tokens_map),
                 tokenizer.eos_token_id, getattr(tokenizer, "chat_template", None)]
    return hashlib.sha1(json.dumps(described, default=str).encode()).hexdigest()


class Files:
    """The files of an entry being built: `files(name, shape, dtype)` gives an array that is already the entry's
    file (a builder whose output is large fills it in place), `files.scratch(name)` a path for the builder's own
    use (e.g. what it has read so far, so that it is never all in memory), removed before the entry is kept."""

    def __init__(self, folder: Path):
        self.folder = folder

    def __call__(self, name: str, shape: tuple, dtype) -> np.ndarray:
        return _on_disk(self.folder, name, shape, dtype)

    def scratch(self, name: str) -> Path:
        return self.folder / f"{name}{_SCRATCH}"


_SCRATCH = ".scratch"


def arrays(key: dict | None, build: Callable[[Files | None], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """`build(files)`'s arrays, memory-mapped from the entry for `key` (built and written first when there is
    none), or `build(None)`'s own arrays where nothing is cached (`key` None, JAXBATCH_CACHE=off, an unwritable
    cache)."""
    base = folder()
    if key is None or base is None:
        return build(None)
    entry = base / hashlib.sha1(json.dumps({**key, "format": FORMAT}, sort_keys=True).encode()).hexdigest()[:20]
    if (entry / _MANIFEST).is_file():
        found = _read(entry)
        if found is not None:
            return found
    elif entry.exists():  # written whole by rename, so a folder without its manifest lost it since
        shutil.rmtree(entry, ignore_errors=True)
    return _write(entry, key, build)


def _clear_abandoned(base: Path) -> None:
    """Removes the temporary folders of this host's writers that are gone (killed mid-write)."""
    host = socket.gethostname()
    for tmp in base.glob(".*+*"):
        parts = tmp.name[1:].split("+")  # entry, host (dots and all), pid, random
        if len(parts) == 4 and parts[1] == host and parts[2].isdigit() and not _alive(int(parts[2])):
            shutil.rmtree(tmp, ignore_errors=True)


def _clear_stale(base: Path) -> None:
    """Removes the entries of another FORMAT (their manifest names another, or none: FORMAT 1's rows, 16 bytes a
    token), which are never read again, rather than leave them to the size bound."""
    for manifest in base.glob(f"[!.]*/{_MANIFEST}"):
        try:
            stale = json.loads(manifest.read_text()).get("format") != FORMAT
        except (OSError, ValueError, AttributeError):  # being written or removed by another process: next time
            continue
        if stale:
            shutil.rmtree(manifest.parent, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _crc(path: Path) -> int:
    """The file's CRC-32, read 4 MB at a time."""
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(4 << 20):
            crc = zlib.crc32(block, crc)
    return crc


def _read(entry: Path) -> dict[str, np.ndarray] | None:
    """The entry's arrays, each checked against the manifest written after them (shape, dtype, CRC-32); None (and
    the entry removed) when one is missing, unreadable or changed."""
    try:
        manifest = json.loads((entry / _MANIFEST).read_text())
        out = {}
        for name, (shape, dtype, crc) in manifest["arrays"].items():
            if _crc(entry / f"{name}.npy") != crc:
                raise ValueError(f"{name}.npy is not what was written (its CRC-32 differs)")
            out[name] = np.load(entry / f"{name}.npy", mmap_mode="r", allow_pickle=False)
            if list(out[name].shape) != shape or str(out[name].dtype) != dtype:
                raise ValueError(f"{name}.npy holds {out[name].dtype}{list(out[name].shape)}, not {dtype}{shape}")
        os.utime(entry / _MANIFEST)  # used now: pruned last
        return out
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:  # a manifest of any shape
        log.warning("token cache %s cannot be read (%s): tokenizing again", entry, e)
        shutil.rmtree(entry, ignore_errors=True)
        return None


def _write(entry: Path, key: dict, build) -> dict[str, np.ndarray]:
    """Builds into a temporary folder renamed into place as `entry`, and reads it back; where the cache cannot be
    written (a full disk, a read-only folder), builds in memory instead. An error of the build's own (its data's)
    is left to go on."""
    _clear_abandoned(entry.parent)
    _clear_stale(entry.parent)
    tmp = entry.parent / f".{entry.name}+{socket.gethostname()}+{os.getpid()}+{uuid.uuid4().hex[:8]}"
    try:
        try:
            tmp.mkdir(parents=True)
            built = build(Files(tmp))
        except _NoRoom as e:
            raise e.__cause__ from None
        for scratch in tmp.glob(f"*{_SCRATCH}"):
            scratch.unlink()
        for name, value in built.items():
            if isinstance(value, np.memmap) and Path(value.filename).parent == tmp:
                value.flush()
            else:
                np.save(tmp / f"{name}.npy", np.asarray(value), allow_pickle=False)
        manifest = {"key": key, "format": FORMAT, "arrays": {
            k: [list(np.shape(v)), str(np.asarray(v).dtype), _crc(tmp / f"{k}.npy")] for k, v in built.items()}}
        (tmp / _MANIFEST).write_text(json.dumps(manifest, default=str))
        del built
        cache.prune(entry.parent, TOKEN_CACHE_BYTES, entries=True)  # the new entry (newest) among them
        try:
            tmp.rename(entry)
        except OSError:  # another process wrote it first: theirs is the same
            if not (entry / _MANIFEST).is_file():
                raise
    except OSError as e:
        if not _cache_error(e, tmp):
            raise
        if entry.parent not in _TOLD:  # once: a corpus has a few splits
            _TOLD.add(entry.parent)
            log.warning("cannot keep tokenized text in %s (%s): it is tokenized again next run", entry.parent,
                        e.strerror or e)
        shutil.rmtree(tmp, ignore_errors=True)
        return build(None)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _read(entry) or build(None)


class _NoRoom(Exception):
    """The cache's own file could not be made (its OSError the cause), as against an error of the data's."""


def _cache_error(e: OSError, tmp: Path) -> bool:
    """Whether an OSError is the cache's: raised making its folder or files (np.save names no file), not the
    build's reading its data."""
    return not e.filename or str(e.filename).startswith(str(tmp.parent))


def _on_disk(tmp: Path, name: str, shape: tuple, dtype) -> np.ndarray:
    """A .npy file of `shape` in `tmp`, mapped for writing, its space taken now: a full disk is an OSError here,
    not a crash (SIGBUS) when a page of the mapping is first written."""
    if not int(np.prod(shape)):
        return np.empty(shape, dtype)  # an empty file cannot be mapped; saved as it is
    path = tmp / f"{name}.npy"
    try:
        out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        size = path.stat().st_size
        if hasattr(os, "posix_fallocate"):
            with open(path, "r+b") as f:
                os.posix_fallocate(f.fileno(), 0, size)
        elif shutil.disk_usage(tmp).free < size:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    except OSError as e:
        raise _NoRoom() from e
    return out
