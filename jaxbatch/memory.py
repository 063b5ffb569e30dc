"""Memory planning from XLA's compiled memory analysis: bytes per device of a train step, and the largest
micro-batch (smallest accumulation count k) whose compiled step fits a budget, without running it.

Nothing is allocated: the step is lowered on abstract inputs (ShapeDtypeStructs with their shardings) and
compiled; `memory_analysis()` reports what XLA's buffer assignment needs per device. This is MaxText's
`train_compile.py` idea, used to choose k instead of discovering OOMs by trial.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np

from jaxbatch import config
from jaxbatch import mesh as mesh_lib
from jaxbatch.errors import ConfigError


@dataclasses.dataclass
class StepMemory:
    micro_batch: int
    accum_steps: int
    params: int  # bytes per device
    optimizer: int
    temp: int  # activations, gradients and other scratch XLA assigns for the step
    total: int  # peak estimate: arguments + outputs not aliased (donated) + temp

    def describe(self) -> str:
        gib = lambda b: f"{b / 2**20:.1f} MiB"  # noqa: E731
        return (f"micro-batch {self.micro_batch} x {self.accum_steps} accumulation steps: params {gib(self.params)}, "
                f"optimizer {gib(self.optimizer)}, activations+temp {gib(self.temp)}, total {gib(self.total)} "
                f"per device")


def _bytes_per_device(tree, shardings) -> int:
    total = 0
    for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
        total += math.prod(s.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
    return total


def abstract_batch(run, batch_size: int) -> dict:
    """The family's global batch as ShapeDtypeStructs with the run's batch shardings."""
    shapes = run.family.batch_shapes(run.spec.model, batch_size, run.spec.data.seq_len)
    return {k: jax.ShapeDtypeStruct(v, np.int32, sharding=run.batch_sh[k]) for k, v in shapes.items()}


def step_memory(spec, accum_steps: int, devices=None) -> StepMemory:
    """Compiles the train step of `spec` with `train.accum_steps = accum_steps` on abstract inputs."""
    from jaxbatch import run as run_lib

    spec = config.replace(spec, train__accum_steps=accum_steps, train__auto_micro_batch=False)
    run = run_lib.setup(spec, devices=devices, abstract=True)
    compiled = run.steps.lower_train(run.state, abstract_batch(run, spec.train.batch_size)).compile()
    stats = compiled.memory_analysis()
    total = stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes + stats.temp_size_in_bytes
    return StepMemory(spec.train.batch_size // accum_steps, accum_steps,
                      _bytes_per_device(run.state.params, run.state_sh.params),
                      _bytes_per_device(run.state.opt_state, run.state_sh.opt_state), stats.temp_size_in_bytes,
                      int(max(total, getattr(stats, "peak_memory_in_bytes", 0) or 0)))


def device_budget(budget_gb: float) -> int:
    if budget_gb > 0:
        return int(budget_gb * 2**30)
    stats = jax.devices()[0].memory_stats() or {}
    if "bytes_limit" not in stats:
        raise ConfigError("this device reports no memory limit; set train.memory_budget_gb for the planner")
    return int(0.9 * stats["bytes_limit"])


def plan_micro_batch(spec, budget_bytes: int, devices=None, log=print) -> StepMemory:
    """The largest micro-batch (a divisor of the global batch, divisible by the batch shards) whose step
    fits `budget_bytes` per device. Tries k = 1, 2, 4, ... (then other divisors) and stops at the first fit."""
    mesh = mesh_lib.make_mesh(spec.mesh, devices)
    shards = mesh_lib.batch_shards(mesh, spec.mesh.rules)
    batch = spec.train.batch_size
    ks = [k for k in range(1, batch + 1) if batch % k == 0 and (batch // k) % shards == 0]
    tried = []
    for k in ks:
        m = step_memory(spec, k, devices)
        tried.append(m)
        log(f"  plan: {m.describe()} -> {'fits' if m.total <= budget_bytes else 'too big'}")
        if m.total <= budget_bytes:
            return m
    raise ConfigError(f"no micro-batch of global batch {batch} fits {budget_bytes / 2**30:.3f} GiB per device "
                      f"(smallest needs {tried[-1].total / 2**30:.3f} GiB); shard more (mesh.fsdp, mesh.model), "
                      f"use precision.policy=bf16, or shorten data.seq_len")
