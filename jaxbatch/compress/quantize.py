"""int8 post-training quantization: per-output-channel symmetric int8 weights with float32 scales, and
optionally int8 activations (dynamic per token, or static per layer from calibration), so the matmul runs as
int8 x int8 -> int32 and is rescaled once.

The numerics are qwix's (Google's JAX quantization library): `qwix.quantize` (symmetric int8 over the
range [-127.5, 127.5], absmax per channel) and `qwix.dot_general`, which contracts the int8 values with an
int32 accumulator and applies both scales to the result. qwix's model-level PTQ provider is not used: it
intercepts calls at run time and keeps its own parameter tree, whereas here the quantized parameters must
keep their logical axes (so an int8 model shards on a mesh like the float one) and have a stable layout
(so they are stored as int8 on disk and restored without a flag). So the modules below own their params and
call qwix's ops. Static activation scales are computed here from calibration batches (max or a percentile of
|x| per layer input), which qwix's PTQ leaves to a separate collection step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import qwix
from flax import nnx

from jaxbatch.models.layers import Dense, Embed

ACTIVATIONS = ("none", "dynamic", "static")
BOUND = 127.5  # qwix's symmetric int8 bound: |x| = absmax lands in the 127 bucket


def quantize_weight(w: jax.Array, contract: int) -> tuple[jax.Array, jax.Array]:
    """(int8 values, float32 scale per output channel (the trailing dims))."""
    q = qwix.quantize(w.astype(jnp.float32), jnp.int8, channelwise_axes=tuple(range(contract, w.ndim)))
    return q.qvalue, q.scale.reshape(w.shape[contract:])


def _contraction(x: jax.Array, n: int):
    return tuple(range(x.ndim - n, x.ndim))


class QuantDense(nnx.Module):
    """A Dense with an int8 kernel (same shape and logical axes) and one float32 scale per output channel.
    `act`: 'none' dequantizes the kernel into the float matmul (weights-only); 'dynamic' quantizes each
    token's input vector on the fly, 'static' with the layer's calibrated scale; both then run the int8 dot."""

    def __init__(self, dense: Dense, act: str = "none"):
        kernel = dense.kernel
        names = tuple(kernel.get_metadata()["logical_axes"])
        self.n_in, self.dtype, self.act = dense.n_in, dense.dtype, act
        self.kernel = nnx.Param(jnp.zeros(kernel.shape, jnp.int8), logical_axes=names, contract=dense.n_in)
        self.scale = nnx.Param(jnp.ones(kernel.shape[dense.n_in:], jnp.float32), logical_axes=names[dense.n_in:])
        self.bias = dense.bias
        if act == "static":
            self.act_scale = nnx.Param(jnp.ones((), jnp.float32), logical_axes=())

    def weight(self) -> qwix.QArray:
        scale = self.scale[...].reshape((1,) * self.n_in + self.scale.shape)
        return qwix.QArray(qvalue=self.kernel[...], scale=scale, qtype=jnp.int8)

    def __call__(self, x: jax.Array, *, deterministic: bool = True, rngs: nnx.Rngs | None = None) -> jax.Array:
        dn = ((_contraction(x, self.n_in), tuple(range(self.n_in))), ((), ()))
        if self.act == "none":
            y = qwix.dot_general(x.astype(jnp.float32), self.weight(), dn)
        else:
            if self.act == "dynamic":
                xq = qwix.quantize(x.astype(jnp.float32), jnp.int8, channelwise_axes=tuple(range(x.ndim - self.n_in)))
            else:
                xq = static_quantize(x, self.act_scale[...])
            y = qwix.dot_general(xq, self.weight(), dn)
        if self.bias is not None:
            y = y + self.bias[...]
        return y.astype(self.dtype)


def static_quantize(x: jax.Array, scale: jax.Array) -> qwix.QArray:
    """x -> int8 with one calibrated scale (values beyond the calibrated range saturate)."""
    q = jnp.clip(jnp.round(x.astype(jnp.float32) / scale), -128, 127).astype(jnp.int8)
    return qwix.QArray(qvalue=q, scale=jnp.reshape(scale, (1,) * x.ndim), qtype=jnp.int8)


class QuantEmbed(nnx.Module):
    """An embedding table stored as int8 with one float32 scale per row: a lookup dequantizes the rows it
    gathers; `attend` (a tied output layer) contracts with the int8 table, one scale per output token."""

    def __init__(self, embed: Embed):
        table = embed.embedding
        self.dtype, self.names = embed.dtype, embed.names
        self.embedding = nnx.Param(jnp.zeros(table.shape, jnp.int8), logical_axes=embed.names)
        self.scale = nnx.Param(jnp.ones(table.shape[:1], jnp.float32), logical_axes=embed.names[:1])

    def __call__(self, ids: jax.Array) -> jax.Array:
        rows = jnp.take(self.embedding[...], ids, axis=0).astype(jnp.float32)
        return (rows * jnp.take(self.scale[...], ids, axis=0)[..., None]).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        table = qwix.QArray(qvalue=self.embedding[...], scale=self.scale[...][:, None], qtype=jnp.int8)
        y = qwix.dot_general(x.astype(jnp.float32), table, (((x.ndim - 1,), (1,)), ((), ())))
        return y.astype(self.dtype)


def quantize_dense(dense: Dense, act: str, act_absmax: float | None = None) -> QuantDense:
    """The QuantDense of a trained Dense (`act_absmax`: the calibrated input range, for act='static')."""
    q = QuantDense(dense, act)
    q.kernel.value, q.scale.value = quantize_weight(dense.kernel[...], dense.n_in)
    if act == "static":
        q.act_scale.value = jnp.asarray(max(act_absmax, 1e-12) / BOUND, jnp.float32)
    return q


def quantize_embed(embed: Embed) -> QuantEmbed:
    q = QuantEmbed(embed)
    table = qwix.quantize(embed.embedding[...].astype(jnp.float32), jnp.int8, channelwise_axes=(0,))
    q.embedding.value, q.scale.value = table.qvalue, table.scale.reshape(-1)
    return q


class Observe(nnx.Module):
    """Wraps a Dense during calibration and keeps the largest per-batch statistic of |input| it has seen:
    the max, or a percentile (robust to rare outliers)."""

    def __init__(self, dense: Dense, percentile: float | None):
        self.dense, self.percentile = dense, percentile
        self.absmax = nnx.Variable(jnp.zeros((), jnp.float32))

    def __call__(self, x: jax.Array, *, deterministic: bool = True, rngs: nnx.Rngs | None = None) -> jax.Array:
        a = jnp.abs(x.astype(jnp.float32))
        stat = jnp.max(a) if self.percentile is None else jnp.percentile(a, self.percentile)
        self.absmax.value = jnp.maximum(self.absmax[...], stat)
        return self.dense(x)


def parse_calibration(text: str) -> float | None:
    """'max' -> None; 'percentile:99.99' -> 99.99."""
    if text == "max":
        return None
    if text.startswith("percentile:"):
        try:
            q = float(text.split(":", 1)[1])
        except ValueError:
            q = -1.0
        if 0 < q <= 100:
            return q
    raise ValueError(f"calibration must be 'max' or 'percentile:Q' with 0 < Q <= 100, got {text!r}")
