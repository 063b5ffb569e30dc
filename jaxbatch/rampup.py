"""Batch-size ramp-up (Brown et al. 2020; Megatron's `--rampup-batch-size`, MaxText's `global_rampup_samples`): the
global batch grows linearly from `train.rampup_start` to `train.batch_size` over the first
`train.rampup_samples` training examples, in steps of `train.rampup_increment`.

The schedule is a function of the samples consumed so far, like Megatron's: batch b is used until
`samples_per_increment` more examples have been seen, then b + increment. A step of b sequences runs
ceil(b / micro) micro-batches of b / k sequences each (never larger than the configured micro-batch), so
the step stays the exact gradient of its b sequences and memory stays within the plan. Each distinct b
compiles the step once (like a length bucket); keep the number of increments small.
"""

from __future__ import annotations

import dataclasses
import math


def batch_sizes(train_cfg) -> list[int]:
    """The global batch of every step, 0 .. train.steps-1."""
    t = train_cfg
    if not t.rampup_samples:
        return [t.batch_size] * t.steps
    increment = t.rampup_increment or micro_batch(t)
    increments = max(1, math.ceil((t.batch_size - t.rampup_start) / increment))
    per_increment = t.rampup_samples / increments
    sizes, seen = [], 0
    while len(sizes) < t.steps:
        b = min(t.batch_size, t.rampup_start + int(seen // per_increment) * increment)
        if b == t.batch_size:  # ramp done: the rest is constant
            return sizes + [b] * (t.steps - len(sizes))
        sizes.append(b)
        seen += b
    return sizes


def steps_for(train_cfg, examples: float) -> int:
    """The fewest steps (at least one) whose batches hold `examples` examples: train.epochs as train.steps."""
    t = train_cfg
    if not t.rampup_samples:
        return max(1, math.ceil(examples / t.batch_size))
    ramp = [b for b in batch_sizes(dataclasses.replace(t, steps=t.rampup_samples // t.rampup_start + 1))
            if b < t.batch_size]  # the ramp's steps: at most rampup_samples / rampup_start
    seen = 0
    for i, b in enumerate(ramp):
        if seen >= examples:
            return max(1, i)
        seen += b
    return len(ramp) + max(0, math.ceil((examples - seen) / t.batch_size)) or 1


def distinct(train_cfg) -> list[int]:
    """The batch sizes a run steps with (each compiles once)."""
    return sorted(set(batch_sizes(train_cfg)))


def micro_batch(train_cfg) -> int:
    return train_cfg.batch_size // train_cfg.accum_steps


def accum_for(batch: int, micro: int) -> int:
    """Micro-batches for a step of `batch` sequences: as few as keep each at most `micro`."""
    return max(1, math.ceil(batch / micro))


def step_micro_batch(batch: int, micro: int) -> float:
    """The micro-batch a step of `batch` sequences runs (its small batch in the noise-scale estimate)."""
    return batch / accum_for(batch, micro)
