"""The host process: its memory allocator, tuned for a training loop, and its RAM (the memory of CPU devices).

Every step allocates and frees the same temporary buffers (on XLA:CPU, all of the step's activations, one
block per device per run). glibc hands large freed blocks back to the kernel, so the next step faults the
same pages in again. Two cases (benchmarks/README.md, step_throughput.py, session 9):
- blocks above 32 MiB (the largest mmap threshold) are mapped on their own and unmapped when freed: no
  per-block mappings and no trimming, at `import jaxbatch`, keep them in the heap (a 0.8M-parameter decoder's
  loop ~10% faster);
- a thread's own arena (XLA's workers each get one) holds at most 64 MiB per heap, so a larger block there
  is mapped afresh whatever the settings: MiniLM's 32 x 128 step on 2 CPU devices made ~395,000 page faults
  (1.2-1.6 s of kernel time in a 2.2 s step) for its 213+ MiB blocks. One arena for every thread (the main
  heap, grown with brk without that limit) keeps those too, but its lock costs a small model's loop 10-25%,
  so `distributed.cpu_one_arena=auto` takes it only for CPU steps whose temporaries pass a thread's heap
  (`THREAD_HEAP`, estimated from the model's shape), before JAX starts (`distributed.initialize`).
Linux/glibc only; elsewhere nothing changes."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc's mallopt parameters (malloc.h)
THREAD_HEAP = 64 * 2**20  # the most a heap of a thread's own arena holds (glibc's HEAP_MAX_SIZE, 64-bit)


@functools.cache
def _mallopt():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (macOS, musl): nothing to tune
        return None


@functools.cache
def keep_freed_memory() -> bool:
    """No per-block mappings, no trimming: freed blocks stay in their arena's heap for reuse. Returns whether
    the allocator took it. Idempotent; `import jaxbatch` calls it. A trim threshold of -1 (glibc: "disables
    trimming completely"), not the largest int: a step that frees more than 2 GiB at the heap's top (a decoder of
    124M parameters on two CPU devices) had it handed back and faulted in again every step (benchmarks/README.md)."""
    mallopt = _mallopt()
    return bool(mallopt and mallopt(_M_MMAP_MAX, 0) and mallopt(_M_TRIM_THRESHOLD, -1))


@functools.cache
def one_arena() -> bool:
    """Every thread allocates from the main heap, so blocks above 64 MiB are kept too. A thread keeps the
    arena it first allocated from: this must run before JAX starts its backends (some of XLA:CPU's threads
    allocate as they start)."""
    mallopt = _mallopt()
    return bool(keep_freed_memory() and mallopt(_M_ARENA_MAX, 1))


def run_once_options(platform: str) -> dict:
    """XLA compiler options for programs that run once or rarely (initialising the state, a checkpoint's
    fingerprint): on CPU, LLVM's optimisation level 0 compiles them in ~half the time (the gpt-tiny state's
    init: 5.1 s -> 3.0 s) and they run for milliseconds either way. Integer results (fingerprints) are
    identical; float ones within 2 ulp (-O2 fuses multiply-adds). Other backends compile as usual."""
    return {"xla_backend_optimization_level": 0} if platform == "cpu" else {}


def physical_memory() -> int:
    """Bytes of RAM on this machine (0 where the OS does not say): CPU devices' memory."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0
