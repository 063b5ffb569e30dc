"""Mixed-precision policies and fp16 dynamic loss scaling.

Policy: parameters and optimizer state stay float32 (the master copy); the forward/backward pass computes
in the policy dtype; LayerNorm statistics, attention softmax and the loss are float32 (see models/layers.py
and steps.py). fp16 additionally needs loss scaling because its 5-bit exponent underflows small gradients.

`jmp` (DeepMind's mixed-precision library) does the same but is archived and unmaintained, so the ~40
lines of dynamic loss scaling live here, tested in tests/test_precision.py.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

COMPUTE_DTYPES = {"fp32": jnp.float32, "bf16": jnp.bfloat16, "fp16": jnp.float16}


def compute_dtype(policy: str):
    return COMPUTE_DTYPES[policy]


@flax.struct.dataclass
class LossScale:
    """Dynamic loss scale: halve and skip the step on non-finite gradients, double after
    `growth_interval` finite steps in a row. For fp32/bf16 the scale is fixed at 1 and never changes."""

    scale: jax.Array
    good_steps: jax.Array
    growth_interval: int = flax.struct.field(pytree_node=False, default=2000)
    dynamic: bool = flax.struct.field(pytree_node=False, default=False)

    @classmethod
    def create(cls, policy: str, init_scale: float = 2.0**15, growth_interval: int = 2000) -> "LossScale":
        dynamic = policy == "fp16"
        return cls(scale=jnp.asarray(init_scale if dynamic else 1.0, jnp.float32),
                   good_steps=jnp.zeros((), jnp.int32), growth_interval=growth_interval, dynamic=dynamic)

    def unscale(self, grads):
        # times the reciprocal (exact for a power-of-two scale, as the default's and its halvings are), which XLA
        # fuses into the update; a division it would write out first
        return jax.tree.map(lambda g: g * (1 / self.scale).astype(g.dtype), grads) if self.dynamic else grads

    def adjust(self, grads_finite: jax.Array) -> "LossScale":
        if not self.dynamic:
            return self
        grow = grads_finite & (self.good_steps + 1 >= self.growth_interval)
        scale = jnp.where(grads_finite, jnp.where(grow, self.scale * 2, self.scale),
                          jnp.maximum(self.scale / 2, 1.0))
        good = jnp.where(grads_finite & ~grow, self.good_steps + 1, 0)
        return self.replace(scale=scale, good_steps=good)

