"""What survives the process on this machine: XLA's persistent compilation cache (the second run of anything
does not recompile; compiling MiniLM's train step takes ~10-40 s on a laptop CPU) and the measured CPU
matmul peak behind MFU. Both live under $JAXBATCH_CACHE (default ~/.cache/jaxbatch); set it to `off` to
keep nothing (tokenized corpora, tokens/, are data/token_cache.py's). The XLA cache is keyed by the jax
version (a folder each) and, inside, by JAX's own key (program, compile options, XLA flags, devices), so a stale
entry is never used; its oldest programs are deleted at start-up past XLA_CACHE_BYTES."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import shutil
import stat
import sys
import tempfile
from pathlib import Path

import jax
from jax.experimental.compilation_cache import compilation_cache

DEFAULT_ROOT = Path.home() / ".cache" / "jaxbatch"
XLA_CACHE_BYTES = 4 << 30  # the XLA cache's folder, all jax versions together, is cut back to this at start-up


def root() -> Path | None:
    value = os.environ.get("JAXBATCH_CACHE", "")
    if value.lower() == "off":
        return None
    return Path(value).expanduser() if value else DEFAULT_ROOT


def enable_compilation_cache() -> None:
    """Turns on the persistent cache unless the user set one (or JAXBATCH_CACHE=off). Idempotent."""
    base = root()
    if base is None or jax.config.jax_compilation_cache_dir:
        return
    folder = base / "xla" / f"jax-{jax.__version__}"
    try:  # a read-only or full cache folder: compile each time, told once (JAX would warn at every read)
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        print(f"warning: compiled programs are not kept: {folder} cannot be written ({e.strerror or e}); set "
              f"JAXBATCH_CACHE to a writable folder, or off", file=sys.stderr)
        return
    prune(base / "xla", XLA_CACHE_BYTES)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:  # JAX's own setting wins when given
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)  # steps, not tiny helper kernels


def prune(folder: Path, limit: int, entries: bool = False) -> None:
    """Deletes the oldest-written files under `folder` until it holds at most `limit` bytes: JAX's cache keeps
    every program forever (its own bound, jax_compilation_cache_max_size, locks the folder on every read and
    scans every entry on every write: 6000 programs written took 536 s of it here, the suite 22 min not 13).
    An old jax version's programs, never read again, go first; a program another process is reading is
    compiled again. `entries`: the folder's subfolders go whole, by their newest file (a tokenized split is
    of no use in part)."""
    units: dict[Path, list[float]] = {}
    try:
        for f in folder.rglob("*"):
            if stat.S_ISREG((st := f.stat()).st_mode):
                unit = units.setdefault(folder / f.relative_to(folder).parts[0] if entries else f, [0.0, 0])
                unit[0], unit[1] = max(unit[0], st.st_mtime), unit[1] + st.st_size
    except OSError:  # a file deleted meanwhile by another process's pruning, an unreadable folder: next time
        return
    total = sum(size for _, size in units.values())
    for path, (_, size) in sorted(units.items(), key=lambda u: u[1][0]):
        if total <= limit:
            break
        with contextlib.suppress(OSError):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        total -= size


@contextlib.contextmanager
def bypassed(devices):
    """Compiles inside skip the persistent cache when `devices` are not this process's (a TPU slice compiled
    for on another machine: libtpu's client-less compiler cannot read an executable back, so a cached entry
    only costs a failed read, a warning and the compile anyway). jax decides once per process whether to use
    the cache, so the decision is reset on the way in and out."""
    if devices is None or set(devices) <= set(jax.devices()) or not jax.config.jax_enable_compilation_cache:
        yield
        return
    jax.config.update("jax_enable_compilation_cache", False)
    compilation_cache.reset_cache()
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", True)
        compilation_cache.reset_cache()


def cached_peak(measure, dtype: str = "float32") -> tuple[float, bool]:
    """(peak FLOP/s, whether it was measured now): measured once per machine, device kind, device count,
    jax version and matmul dtype, then read back (runs start faster and share one number; the measurement itself is
    the largest of several, see metrics.measure_matmul_flops)."""
    stored, key = _stored_peaks(), _peak_key(dtype)
    if key in stored:
        return float(stored[key]), False
    value = measure()
    _store_peak(stored, key, value)
    return value, True


def raise_peak(value: float, dtype: str = "float32") -> None:
    """Stores `value` as this machine's peak if it is higher than the one stored: a step that ran faster than
    the measured matmul shows the measurement was taken in a slow moment (a busy laptop), and a low peak would
    otherwise stay cached and show MFU above 100% in every later run."""
    stored, key = _stored_peaks(), _peak_key(dtype)
    if value > float(stored.get(key, 0.0)):
        _store_peak(stored, key, value)


def _peak_key(dtype: str) -> str:
    """The machine is its host name and its processor: a VM image keeps its name on other hardware (this project's
    dev boxes are all 'vm', AMD Zen 3 and Zen 5 alike, whose fp32 peaks differ ~2x), and a stale peak would show
    a false MFU. fp32 keys carry no dtype (the form they had before peaks were kept per dtype)."""
    key = (f"{platform.node()}|{processor()}|{os.cpu_count()}|{jax.devices()[0].device_kind}|{jax.device_count()}|"
           f"jax-{jax.__version__}")
    return key if dtype == "float32" else f"{key}|{dtype}"


@functools.cache
def processor() -> str:
    """The first CPU's identity in /proc/cpuinfo (x86: vendor, family, model, name; Arm: implementer, part) and a
    digest of its feature flags (a VM's model name may be generic, "AMD EPYC", across generations), else what
    `platform` says (macOS, Windows)."""
    ids = ("vendor_id", "cpu family", "model", "model name", "CPU implementer", "CPU part")
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip() and fields:
                    break  # the first processor's block
                name, _, value = line.partition(":")
                fields.setdefault(name.strip(), value.strip())
    except OSError:
        pass
    named = [fields[k] for k in ids if k in fields]
    if not named:
        return platform.processor() or platform.machine()
    flags = fields.get("flags", fields.get("Features", ""))
    return "/".join([*named, hashlib.sha256(flags.encode()).hexdigest()[:8]])


def _peak_path() -> Path | None:
    base = root()
    return base / "peak_flops.json" if base else None


def _stored_peaks() -> dict:
    path = _peak_path()
    if path is not None and path.is_file():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass
    return {}


def _store_peak(stored: dict, key: str, value: float) -> None:
    path = _peak_path()
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({**stored, key: value}))
        tmp.replace(path)
    except OSError:
        pass  # a read-only home: measure again next time
