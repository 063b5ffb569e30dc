"""host.py: glibc keeps freed memory for the next step; programs that run once compile at LLVM -O0 on CPU
with the same numbers."""

import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import tiny_config
from jaxbatch import host, optim
from jaxbatch import state as state_lib

MMAPPED_BYTES_AFTER_MALLOC = """
import ctypes, sys
from jaxbatch import host
class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Mallinfo2
libc.malloc.restype = ctypes.c_void_p
if sys.argv[1] == "keep":
    assert host.keep_freed_memory()
before = libc.mallinfo2().hblkhd
block = libc.malloc(16 << 20)
print(libc.mallinfo2().hblkhd - before)
libc.free(ctypes.c_void_p(block))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_keep_freed_memory_serves_large_blocks_from_the_heap():
    """By default glibc maps a 16 MiB block on its own (and unmaps it when freed: the next step faults its
    pages in again); after keep_freed_memory it comes from the heap, which is kept."""
    mapped = {mode: int(subprocess.run([sys.executable, "-c", MMAPPED_BYTES_AFTER_MALLOC, mode], check=True,
                                       capture_output=True, text=True).stdout)
              for mode in ("default", "keep")}
    assert mapped["default"] >= 16 << 20
    assert mapped["keep"] == 0


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
