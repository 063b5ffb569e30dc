"""jaxbatch: large-batch Transformer training on JAX device meshes."""

import sys

from jaxbatch import backends, host

__version__ = "0.1.0"

host.keep_freed_memory()  # freed step buffers stay in the process for the next step (host.py)
backends.cpu_only_without_tpu_chips()  # libtpu without TPU chips: no start-up noise (backends.py)

if "IPython" not in sys.modules:  # not in a notebook or IPython shell
    # flax.nnx asks IPython at import whether it runs inside IPython (for colours and displays). Outside
    # it the answer is no; importing IPython to hear that took ~0.5 s of every start-up (and of every
    # test worker). flax catches the ImportError and takes "no".
    sys.modules["IPython"] = None
    try:
        import flax.nnx  # noqa: F401
    finally:
        del sys.modules["IPython"]
