"""Which JAX backends a process starts.

`jaxbatch[tpu]` installs libtpu so that `plan --target` can compile for TPU slices on a CPU box (topology.py).
With libtpu installed, JAX tries to start the TPU runtime in every process; on a machine without TPU chips
libtpu then prints half a dozen lines of warnings and errors (TPU_ACCELERATOR_TYPE, TPU_WORKER_HOSTNAMES,
"INVALID_ARGUMENT") before JAX falls back to the CPU, burying the one line a bad input gets. Compiling for a
topology does not need the TPU backend, so where there are no TPU chips and no GPU plugin, and the user chose
no platform (JAX_PLATFORMS), only the CPU backend is started."""

from __future__ import annotations

import importlib.metadata
import importlib.util

import jax


def cpu_only_without_tpu_chips() -> bool:
    """Sets jax_platforms=cpu on a machine with libtpu but no TPU chips (and no GPU plugin, and no platform
    chosen); returns whether it did. Must run before the first JAX operation to take effect; `import
    jaxbatch` calls it."""
    if jax.config.jax_platforms or importlib.util.find_spec("libtpu") is None:
        return False
    if _plugin():
        return False  # a GPU (or other) PJRT plugin: JAX picks among them
    try:
        from jax._src import hardware_utils  # how JAX itself counts the chips on the PCI bus
    except ImportError:
        return False
    count = getattr(hardware_utils, "num_available_tpu_chips_and_device_id", None)
    if count is None or count()[0]:
        return False
    jax.config.update("jax_platforms", "cpu")
    return True


def _plugin() -> bool:
    return bool(importlib.metadata.entry_points(group="jax_plugins") or importlib.util.find_spec("jax_plugins"))


def runs_on_cpu(platforms: str | None) -> bool:
    """Whether JAX will run on the CPU alone, known before it starts: the chosen `jax_platforms` (which
    `cpu_only_without_tpu_chips` sets where libtpu finds no chips) name only cpu, or, none chosen, nothing
    that gives JAX another backend is installed (libtpu, a PJRT plugin such as CUDA's)."""
    if platforms:
        return {p.strip() for p in platforms.split(",")} == {"cpu"}
    return importlib.util.find_spec("libtpu") is None and not _plugin()
