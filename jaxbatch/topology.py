"""Target hardware: the chips jaxbatch knows (memory and peak bf16 FLOP/s, from the vendors' spec sheets) and,
for TPUs, the devices of a whole slice to compile for ahead of time on any machine.

`pip install 'jaxbatch[tpu]'` brings libtpu, which compiles for TPUs without TPU hardware:
`jax.experimental.topologies.get_topology_desc` describes a slice (e.g. v5e:16x16, 256 chips) and the real
train step is lowered and compiled on abstract inputs sharded over it, as MaxText's `train_compile.py` does.
GPUs cannot be compiled for without their driver; their rows serve MFU and memory budgets on the card.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

from jaxbatch.errors import ConfigError

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    memory: int  # bytes of HBM per chip
    peak_flops: float  # dense bf16 FLOP/s per chip
    kinds: tuple[str, ...]  # jax device_kind strings of this chip


CHIPS = {
    "v4": Chip("TPU v4", 32 * GIB, 275e12, ("TPU v4",)),
    "v5e": Chip("TPU v5e", 16 * GIB, 197e12, ("TPU v5 lite", "TPU v5e")),
    "v5p": Chip("TPU v5p", 95 * GIB, 459e12, ("TPU v5p", "TPU v5")),
    "v6e": Chip("TPU v6e", 32 * GIB, 918e12, ("TPU v6 lite", "TPU v6e")),
    "a100": Chip("NVIDIA A100 80GB", 80 * GIB, 312e12, ("NVIDIA A100",)),
    "h100": Chip("NVIDIA H100", 80 * GIB, 989e12, ("NVIDIA H100",)),
    "h200": Chip("NVIDIA H200", 141 * GIB, 989e12, ("NVIDIA H200",)),
}


def chip_for_kind(kind: str) -> Chip | None:
    """The chip whose device_kind is `kind` (the longest matching prefix: 'TPU v5 lite' is v5e, 'TPU v5' v5p)."""
    matches = [(len(k), chip) for chip in CHIPS.values() for k in chip.kinds if kind.startswith(k)]
    return max(matches, key=lambda m: m[0])[1] if matches else None


@dataclasses.dataclass(frozen=True)
class Target:
    """A TPU slice to compile for: its devices and what each device has."""

    name: str
    chip: Chip
    devices: list
    chips: int  # in all its slices
    slices: int = 1

    @property
    def per_chip(self) -> int:
        return len(self.devices) // self.chips

    @property
    def device_memory(self) -> int:
        return self.chip.memory // self.per_chip

    @property
    def device_peak_flops(self) -> float:
        return self.chip.peak_flops / self.per_chip

    def describe(self) -> str:
        slices = f" in {self.slices} slices" if self.slices > 1 else ""
        return (f"{self.name}: {self.chips} x {self.chip.name}{slices} ({len(self.devices)} devices, "
                f"{self.device_memory / GIB:.1f} GiB and {self.device_peak_flops / 1e12:.0f} TFLOP/s bf16 each)")


def target(name: str) -> Target:
    """The devices of TPU slice `name` ('v5e:4x4', 'v4:2x2x2', 'v5p:4x4x4', 'v6e:8x8'), or of N such slices joined
    by the data-center network ('2xv5e:16x16', multislice: MaxText's compile_topology_num_slices), compiled for
    locally."""
    m = re.fullmatch(r"(?:(\d+)x)?(v4|v5e|v5p|v6e):(\d+(?:x\d+){1,2})", name)
    if not m or int(m[1] or 1) < 1:
        raise ConfigError(f"--target {name!r}: use a TPU generation and chip topology, e.g. v5e:4x4, v5e:16x16, "
                          f"v4:2x2x2, v5p:4x4x4, v6e:8x8, or N slices of one: 2xv5e:16x16")
    slices, generation, chips_shape = int(m[1] or 1), m[2], m[3]
    try:
        import libtpu  # noqa: F401
    except ImportError as e:
        raise ConfigError("--target compiles for TPUs with libtpu, which is not installed: "
                          "pip install 'jaxbatch[tpu]' (it works on a machine without TPUs)") from e
    from jax.experimental import topologies

    # Compiling takes no TPU, so several processes may do it at once (libtpu otherwise keeps one per machine).
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    # v4 and v5p chips hold two cores that JAX runs as one device ("megacore"), as on the real slice
    kwargs = {"chip_config_name": "megacore"} if generation in ("v4", "v5p") else {}
    try:
        devices = topologies.get_topology_desc(platform="tpu", topology_name=f"{generation}:{chips_shape}",
                                               num_slices=slices, **kwargs).devices
    except Exception as e:  # libtpu reports a bad topology as a generic runtime error
        raise ConfigError(f"--target {name}: libtpu cannot describe this slice ({str(e).splitlines()[0]})") from e
    chips = slices * math.prod(int(d) for d in chips_shape.split("x"))
    return Target(name, CHIPS[generation], list(devices), chips, slices)
