"""Multi-host start-up through `jax.distributed`: one process per host, all devices in one global mesh.

On Cloud TPU VMs and under SLURM, `jax.distributed.initialize()` finds the coordinator itself
(`distributed.auto=true`); elsewhere give the coordinator address, the process count and this process's id.
CPU processes (tests, development) talk through gloo collectives.
"""

from __future__ import annotations

import jax


def initialize(dist_cfg) -> bool:
    """Starts jax.distributed when configured; returns whether it did. Must run before any device use."""
    if dist_cfg.num_processes <= 1 and not dist_cfg.auto:
        return False
    if dist_cfg.cpu_devices:
        jax.config.update("jax_num_cpu_devices", dist_cfg.cpu_devices)
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if dist_cfg.auto:
        jax.distributed.initialize()
    else:
        if not dist_cfg.coordinator:
            from jaxbatch.config import ConfigError

            raise ConfigError("distributed.num_processes > 1 needs distributed.coordinator=HOST:PORT")
        jax.distributed.initialize(dist_cfg.coordinator, num_processes=dist_cfg.num_processes,
                                   process_id=dist_cfg.process_id)
    return True


def describe() -> str:
    return (f"process {jax.process_index()} of {jax.process_count()}: {jax.local_device_count()} local / "
            f"{jax.device_count()} global devices")
