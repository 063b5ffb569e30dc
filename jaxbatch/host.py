"""The host process's memory allocator, tuned for a training loop.

Every step allocates and frees the same temporary buffers (on XLA:CPU, all of the step's activations: one
block per device per step, 213 MiB for MiniLM at 32 x 32 on 2 devices). glibc hands large freed blocks back
to the kernel, so the next step faults the same pages in again: MiniLM's 32 x 128 step on 2 cores took
~395,000 page faults and 1.2-1.6 s of kernel time, of a 2.2 s step (benchmarks/README.md). Its thresholds
cannot keep such blocks: above 32 MiB (the largest mmap threshold) and in any thread's own arena (XLA's
workers each get one; an arena heap holds at most 64 MiB) malloc maps every block on its own and unmaps it
when freed. So: one arena (the main heap, which grows with brk without that limit), no per-block mappings,
no trimming. A training loop uses what it freed again on its next step. Linux/glibc only; elsewhere it does
nothing."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc's mallopt parameters (malloc.h)


@functools.cache
def keep_freed_memory() -> bool:
    """One arena, no per-block mappings, no trimming: freed blocks of any size stay in the heap for reuse.
    Returns whether the allocator took it. Idempotent. It must run before XLA's threads first allocate (a
    thread keeps the arena it started with), so `import jaxbatch` calls it."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (macOS, musl): nothing to tune
        return False
    return bool(mallopt(_M_ARENA_MAX, 1) and mallopt(_M_MMAP_MAX, 0) and mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1))


def run_once_options(platform: str) -> dict:
    """XLA compiler options for programs that run once or rarely (initialising the state, a checkpoint's
    fingerprint): on CPU, LLVM's optimisation level 0 compiles them in ~half the time (the gpt-tiny state's
    init: 5.1 s -> 3.0 s) and they run for milliseconds either way. Integer results (fingerprints) are
    identical; float ones within 2 ulp (-O2 fuses multiply-adds). Other backends compile as usual."""
    return {"xla_backend_optimization_level": 0} if platform == "cpu" else {}
