"""The host process's memory allocator, tuned for a training loop.

Every step allocates and frees the same temporary buffers (on XLA:CPU, all of the step's activations).
glibc's malloc hands large freed blocks back to the kernel (munmap, heap trimming), so the next step
faults the same pages in again: up to ~6,000 page faults and ~20 ms of kernel time per step of a
0.8M-parameter decoder on 2 cores, in bursts that made the loop's speed wander (benchmarks/README.md,
"Decoder step on CPU"). Keeping freed memory in the process costs nothing a training loop does not
use again on its next step. Linux/glibc only; elsewhere it does nothing."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


@functools.cache
def keep_freed_memory() -> bool:
    """Raises glibc's mmap and trim thresholds to their maximum (freed blocks stay in the heap for reuse);
    returns whether the allocator took it. Idempotent."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (macOS, musl): nothing to tune
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20) and mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1))


def run_once_options(platform: str) -> dict:
    """XLA compiler options for programs that run once or rarely (initialising the state, a checkpoint's
    fingerprint): on CPU, LLVM's optimisation level 0 compiles them in ~half the time (the gpt-tiny state's
    init: 5.1 s -> 3.0 s) and they run for milliseconds either way. Integer results (fingerprints) are
    identical; float ones within 2 ulp (-O2 fuses multiply-adds). Other backends compile as usual."""
    return {"xla_backend_optimization_level": 0} if platform == "cpu" else {}
