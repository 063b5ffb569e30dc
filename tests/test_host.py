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

MAPPED_BYTES_OF_A_WORKER_BLOCK = """
import ctypes, sys, threading
if sys.argv[1] == "jaxbatch":
    import jaxbatch  # noqa: F401
class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Mallinfo2
mapped = []

def worker():  # as XLA:CPU's worker threads allocate a step's buffers (tsl::port::AlignedMalloc)
    block = ctypes.c_void_p()
    before = libc.mallinfo2().hblkhd
    assert libc.posix_memalign(ctypes.byref(block), 64, 128 << 20) == 0
    mapped.append(libc.mallinfo2().hblkhd - before)
    libc.free(block)

thread = threading.Thread(target=worker)
thread.start()
thread.join()
print(mapped[0])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_a_worker_threads_large_block_comes_from_the_kept_heap():
    """By default glibc maps a thread's 128 MiB block on its own and unmaps it when freed (the next step
    faults its 32,768 pages in again); in a process that imported jaxbatch it comes from the heap, which is
    kept. (MiniLM's 32 x 128 step on 2 CPU devices: ~395,000 page faults per step before, 0 after.)"""
    mapped = {mode: int(subprocess.run([sys.executable, "-c", MAPPED_BYTES_OF_A_WORKER_BLOCK, mode], check=True,
                                       capture_output=True, text=True).stdout)
              for mode in ("plain", "jaxbatch")}
    assert mapped["plain"] >= 128 << 20
    assert mapped["jaxbatch"] == 0
    assert host.keep_freed_memory()


def test_run_once_options_give_the_same_initial_state():
    """The state's init compiled at -O0 (host.run_once_options on CPU) is the fully optimised compile's up to
    rounding (LLVM fuses multiply-adds at -O2: 2 ulp at most), and integer state is identical."""
    cfg = tiny_config()
    tx, _ = optim.make(cfg.optim, optim.scale_hparams(cfg.optim, cfg.train.batch_size), cfg.train.steps)
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
