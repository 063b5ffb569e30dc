"""host.py: freed buffers stay in the process for the next step; programs that run once compile at LLVM -O0 on CPU
with the same numbers."""

import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import tiny_config
from jaxbatch import host, optim
from jaxbatch import state as state_lib

MAPPED_BYTES_OF_A_BLOCK = """
import ctypes, sys, threading
mode, where = sys.argv[1:]
if mode != "plain":
    from jaxbatch import host
if mode == "one_arena":
    assert host.one_arena()
class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Mallinfo2
mapped = []

def allocate():  # as XLA:CPU allocates a step's buffers (tsl::port::AlignedMalloc), on a worker thread
    block = ctypes.c_void_p()
    before = libc.mallinfo2().hblkhd
    assert libc.posix_memalign(ctypes.byref(block), 64, 128 << 20) == 0
    mapped.append(libc.mallinfo2().hblkhd - before)
    libc.free(block)

if where == "thread":
    thread = threading.Thread(target=allocate)
    thread.start()
    thread.join()
else:
    allocate()
print(mapped[0])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_large_blocks_come_from_the_kept_heap():
    """By default glibc maps a 128 MiB block on its own and unmaps it when freed (the next step faults its
    32,768 pages in again). After `import jaxbatch` the main thread's comes from the heap, which is kept; a
    worker thread's arena cannot hold it (64 MiB heaps) until every thread shares the main heap
    (host.one_arena: MiniLM's 32 x 128 step on 2 CPU devices, ~395,000 page faults per step before, 0 after)."""
    def mapped(mode, where):
        return int(subprocess.run([sys.executable, "-c", MAPPED_BYTES_OF_A_BLOCK, mode, where], check=True,
                                  capture_output=True, text=True).stdout)

    assert mapped("plain", "main") >= 128 << 20 and mapped("plain", "thread") >= 128 << 20
    assert mapped("import", "main") == 0
    assert mapped("import", "thread") >= 128 << 20
    assert mapped("one_arena", "thread") == 0
    assert host.keep_freed_memory()


HEAP_AFTER_A_FREED_BLOCK = """
import ctypes
from jaxbatch import host
assert host.keep_freed_memory()
class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Mallinfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
block = libc.malloc(5 << 29)  # 2.5 GiB of untouched pages: address space, not memory
assert block
libc.free(ctypes.c_void_p(block))
print(libc.mallinfo2().arena)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_a_block_above_2_gib_freed_at_the_heaps_top_stays():
    """The trim threshold is "never", not the largest int: GPT-2 124M's step on two CPU devices frees ~2.5 GiB at
    the heap's top, which was handed back and faulted in again each step (~637,000 page faults a step)."""
    heap = int(subprocess.run([sys.executable, "-c", HEAP_AFTER_A_FREED_BLOCK], check=True, capture_output=True,
                              text=True).stdout)
    assert heap >= 5 << 29


def test_run_once_options_give_the_same_initial_state():
    """The state's init compiled at -O0 (host.run_once_options on CPU) is the fully optimised compile's up to
    rounding (LLVM fuses multiply-adds at -O2: 2 ulp at most), and integer state is identical."""
    cfg = tiny_config()
    tx, _ = optim.make(cfg.optim, optim.scale_hparams(cfg.optim, cfg.train.batch_size, cfg.train.steps), cfg.train.steps)
    init = state_lib.init_fn(cfg, tx)
    assert host.run_once_options("cpu") == {"xla_backend_optimization_level": 0}
    fast = jax.jit(init, compiler_options=host.run_once_options("cpu"))()
    full = jax.jit(init, compiler_options={"xla_backend_optimization_level": 2})()
    for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(full), strict=True):
        a, b = np.asarray(a), np.asarray(b)
        if np.issubdtype(a.dtype, np.floating):
            np.testing.assert_array_max_ulp(a, b, maxulp=2)
        else:
            np.testing.assert_array_equal(a, b)
    assert host.run_once_options("tpu") == {}
