"""Exact gradient accumulation: k micro-batches give the gradient of one k-times-larger batch.

The loss is a *sum* over real tokens (or examples) divided by the token count of the whole global batch,
so micro-batches with different numbers of real tokens are weighted correctly (a mean of per-micro-batch
means is not the big-batch mean; cf. transformers #24725). The default implementation scans over
micro-batches inside the jitted step with one gradient buffer; `optax.MultiSteps` is the alternative
(see `multisteps`), kept for users who already structure their loop that way.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

# grad_fn(params, micro_batch, rng, normalizer) -> (metric sums, grads of sum(loss) * normalizer)
GradFn = Callable


def split_micro_batches(batch: dict, k: int) -> dict:
    """(B, ...) -> (k, B/k, ...) taking every k-th example, so that each device's contiguous batch shard
    holds a slice of every micro-batch (a plain reshape would put whole micro-batches on few devices)."""
    return jax.tree.map(lambda x: jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1), batch)


def scan_gradients(grad_fn: GradFn, params, batch: dict, k: int, rng: jax.Array, normalizer: jax.Array):
    """Sums k micro-batch gradients in a `lax.scan` (one param-sized buffer, one compiled body).

    With k >= 2 the metrics also carry `micro_grad_sq`: the mean over micro-batches of the squared norm of
    each micro-batch's own mean gradient, which the gradient-noise-scale estimate needs (noise_scale.py)."""
    if k == 1:
        return grad_fn(params, batch, rng, normalizer)
    micro = split_micro_batches(batch, k)

    def body(carry, xs):
        i, mb = xs
        metrics, grads = grad_fn(params, mb, jax.random.fold_in(rng, i), normalizer)
        # grads = d(sum of micro losses)/dp * normalizer; its own mean gradient divides by its token count
        mean_scale = 1.0 / (normalizer * jnp.maximum(metrics["weight"], 1.0))
        metrics = dict(metrics, micro_grad_sq=optax.tree.norm(grads, squared=True) * mean_scale**2 / k)
        return jax.tree.map(jnp.add, carry, (metrics, grads)), None

    first = jax.tree.map(lambda x: x[0], micro)
    metrics0, grads0 = jax.eval_shape(grad_fn, params, first, rng, normalizer)
    metrics0 = dict(metrics0, micro_grad_sq=jax.ShapeDtypeStruct((), jnp.float32))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (metrics0, grads0))
    (metrics, grads), _ = jax.lax.scan(body, zeros, (jnp.arange(k), micro))
    return metrics, grads


def wrap(tx: optax.GradientTransformation, train_cfg) -> optax.GradientTransformation:
    """The optimizer a run steps with: `tx` itself, or tx inside MultiSteps when that accumulation is chosen."""
    if train_cfg.accum_impl == "multisteps" and train_cfg.accum_steps > 1:
        return multisteps(tx, train_cfg.accum_steps)
    return tx


def multisteps(tx: optax.GradientTransformation, k: int) -> optax.GradientTransformation:
    """optax.MultiSteps: the inner optimizer runs on every k-th call with the mean of the k gradients
    given to it. Callers feed it k x (gradient of the micro-batch loss sum / global token count), whose
    mean is the exact global-batch gradient."""
    return optax.MultiSteps(tx, every_k_schedule=k, use_grad_mean=True)
