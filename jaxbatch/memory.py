"""Memory planning from XLA's compiled memory analysis: bytes per device of a train step, and the largest
micro-batch (smallest accumulation count k) whose compiled step fits a budget, without running it.

Nothing is allocated: the step is lowered on abstract inputs (ShapeDtypeStructs with their shardings) and
compiled; `memory_analysis()` reports what XLA's buffer assignment needs per device. This is MaxText's
`train_compile.py` idea, used to choose k instead of discovering OOMs by trial.
"""

from __future__ import annotations

import dataclasses
import math
import re

import jax
import numpy as np

from jaxbatch import cache, config, host, models
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
    # per device per step, XLA's cost analysis (the accumulation loop body x k); None where the step scans layers or
    # vocabulary pieces, whose loop bodies the cost model counts once (llama-tiny with scanned layers: 4.7 of 8.7 GFLOP)
    flops: float | None = None
    seconds: float | None = None  # XLA's estimated step time (TPU compiler), the same way

    def describe(self) -> str:
        return (f"micro-batch {self.micro_batch} x {self.accum_steps} accumulation steps: params {size(self.params)}, "
                f"optimizer {size(self.optimizer)}, activations+temp {size(self.temp)}, total {size(self.total)} "
                f"per device")


def size(n: float) -> str:
    """Bytes in GiB from 1 GiB up, else in MiB: a small model's sizes and budgets do not all read 0.00 GiB."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


class DoesNotFit(ConfigError):
    """No micro-batch fits; `smallest` is the best that was measured (or params + optimizer alone)."""

    def __init__(self, message: str, smallest: StepMemory):
        super().__init__(message)
        self.smallest = smallest


def _bytes_per_device(tree, shardings) -> int:
    total = 0
    for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
        total += math.prod(s.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
    return total


def abstract_batch(run, batch_size: int) -> dict:
    """The family's global batch as ShapeDtypeStructs with the run's batch shardings."""
    return models.abstract_batch(run.spec.model, batch_size, run.spec.data.seq_len, run.batch_sh)


_measured: dict = {}


def step_memory(spec, accum_steps: int, devices=None) -> StepMemory:
    """Compiles the train step of `spec` with `train.accum_steps = accum_steps` on abstract inputs (once per
    step and device set in a process: `plan --compare-meshes`, the planner and a resumed run's planner ask for the
    same step; the planner's own settings do not change it)."""
    step = config.replace(spec, train__accum_steps=accum_steps, train__auto_micro_batch=False,
                          train__memory_budget_gb=0.0)
    key = (step, None if devices is None else tuple(devices))
    if key not in _measured:
        _measured[key] = _compile_step(step, devices)
    return _measured[key]


def _compile_step(spec, devices=None) -> StepMemory:
    from jaxbatch import run as run_lib

    accum_steps = spec.train.accum_steps
    run = run_lib.setup(spec, devices=devices, abstract=True)
    params = _bytes_per_device(run.state.params, run.state_sh.params)
    optimizer = _bytes_per_device(run.state.opt_state, run.state_sh.opt_state)
    try:
        with cache.bypassed(devices):
            compiled = run.steps.lower_train(run.state, abstract_batch(run, spec.train.batch_size)).compile()
    except jax.errors.JaxRuntimeError as e:  # the TPU compiler refuses a program larger than the chip's HBM
        needed = re.search(r"RESOURCE_EXHAUSTED.*?\(([\d.]+)G\)", str(e))
        if not needed:
            raise
        temp = int(float(needed[1]) * 2**30)
        return StepMemory(spec.train.batch_size // accum_steps, accum_steps, params, optimizer, temp,
                          params + optimizer + temp)
    stats = compiled.memory_analysis()
    total = stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes + stats.temp_size_in_bytes
    cost = compiled.cost_analysis() or {}
    cost = cost[0] if isinstance(cost, list) else cost
    loops = accum_steps if spec.train.accum_impl == "scan" else 1  # the cost model counts a loop body once
    flops, seconds = cost.get("flops"), cost.get("optimal_seconds")
    if spec.model.scan_layers or spec.model.vocab_tiling > 1:  # loops of unknown weight inside: no count is true
        flops = seconds = None
    return StepMemory(spec.train.batch_size // accum_steps, accum_steps, params, optimizer, stats.temp_size_in_bytes,
                      int(max(total, getattr(stats, "peak_memory_in_bytes", 0) or 0)),
                      flops * loops if flops else None, seconds * loops if seconds and seconds > 0 else None)


def state_bytes(spec, devices=None) -> StepMemory:
    """Params and optimizer state per device, from shapes and shardings alone (nothing compiled)."""
    from jaxbatch import run as run_lib

    run = run_lib.setup(config.replace(spec, train__auto_micro_batch=False), devices=devices, abstract=True)
    params = _bytes_per_device(run.state.params, run.state_sh.params)
    optimizer = _bytes_per_device(run.state.opt_state, run.state_sh.opt_state)
    return StepMemory(spec.train.batch_size, 1, params, optimizer, 0, params + optimizer)


def device_budget(budget_gb: float) -> int:
    """Bytes per device the planner may fill: `budget_gb`, else 90% of the device's memory (CPU devices share
    the host's RAM, so each gets its share of it)."""
    if budget_gb > 0:
        return int(budget_gb * 2**30)
    device = jax.devices()[0]
    stats = device.memory_stats() or {}
    if "bytes_limit" in stats:
        return int(0.9 * stats["bytes_limit"])
    ram = host.physical_memory() if device.platform == "cpu" else 0
    if ram:
        return int(0.9 * ram / jax.local_device_count())
    raise ConfigError("this device reports no memory limit; set train.memory_budget_gb for the planner")


def _remedies(spec) -> str:
    """What would shrink the step's memory, leaving out what the spec already does."""
    ways = ["shard more (mesh.fsdp, mesh.model)"]
    if spec.model.remat == "none":
        ways.append("recompute activations (model.remat=full)")
    if spec.precision.policy == "fp32":
        ways.append("use precision.policy=bf16")
    if spec.model.task == "lm" and spec.model.vocab_tiling == 1 and not models.masked_lm(spec.model):
        ways.append("compute the LM's logits in pieces (model.vocab_tiling=8)")
    return ", ".join(ways) + " or shorten data.seq_len"


def plan_micro_batch(spec, budget_bytes: int, devices=None, log=print) -> StepMemory:
    """The largest micro-batch (a divisor of the global batch, divisible by the batch shards) whose step
    fits `budget_bytes` per device. Memory falls as k grows, so: params + optimizer alone (no compile), then
    k = 1 (the usual answer), then the largest k (if even that does not fit, nothing does), then a bisection
    over the candidate k's in between."""
    mesh = mesh_lib.make_mesh(spec.mesh, devices)
    shards = mesh_lib.batch_shards(mesh, spec.mesh.rules)
    batch = spec.train.batch_size
    ks = [k for k in range(1, batch + 1) if batch % k == 0 and (batch // k) % shards == 0]
    fixed = state_bytes(spec, devices)
    if fixed.total > budget_bytes:
        raise DoesNotFit(f"parameters and optimizer state alone take {size(fixed.total)} per device "
                         f"(params {size(fixed.params)}, optimizer {size(fixed.optimizer)}) of a "
                         f"{size(budget_bytes)} budget; shard them (mesh.fsdp, mesh.model)", fixed)
    measured: dict[int, StepMemory] = {}

    def fits(k: int) -> bool:
        if k not in measured:
            measured[k] = step_memory(spec, k, devices)
            log(f"  plan: {measured[k].describe()} -> {'fits' if measured[k].total <= budget_bytes else 'too big'}")
        return measured[k].total <= budget_bytes

    if fits(ks[0]):
        return measured[ks[0]]
    if not fits(ks[-1]):
        raise DoesNotFit(f"no micro-batch of global batch {batch} fits {size(budget_bytes)} per device "
                         f"(the smallest, {ks[-1]} accumulation steps of {batch // ks[-1]}, needs "
                         f"{size(measured[ks[-1]].total)}); {_remedies(spec)}", measured[ks[-1]])
    lo, hi = 1, len(ks) - 1  # ks[0] does not fit, ks[hi] does; find the first that does
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(ks[mid]):
            hi = mid
        else:
            lo = mid + 1
    return measured[ks[hi]]
