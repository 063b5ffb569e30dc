"""Transformer building blocks shared by the model families (encoders and decoders).

Every parameter is an `nnx.Param` with `logical_axes` metadata naming its dimensions; `mesh.py` turns the
names into shardings. Parameters are stored in float32; `dtype` is the compute dtype of the precision
policy (LayerNorm statistics and attention softmax are always computed in float32).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxbatch.mesh import activation_spec, constrain, target_device

Names = tuple[str | None, ...]
normal = jax.nn.initializers.normal

_exact_gelu = functools.partial(jax.nn.gelu, approximate=False)
_tanh_gelu = functools.partial(jax.nn.gelu, approximate=True)
# MLP nonlinearities by the names Hugging Face config.json files give them (hidden_act, activation_function),
# so a checkpoint's choice is read and written back as is; aliases compute the same function as HF's.
ACTIVATIONS = {"gelu": _exact_gelu, "gelu_python": _exact_gelu, "gelu_new": _tanh_gelu,
               "gelu_pytorch_tanh": _tanh_gelu, "gelu_fast": _tanh_gelu,
               "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
               "relu": jax.nn.relu, "silu": jax.nn.silu, "swish": jax.nn.silu}


def param(rngs: nnx.Rngs | None, init, shape: Sequence[int], names: Names, decay: bool = True,
          **metadata) -> nnx.Param:
    """A float32 parameter named by logical axes; `decay=False` exempts it from weight decay (biases and
    normalisation parameters, as the published encoder and decoder recipes do)."""
    key = rngs.params() if rngs is not None else jax.random.key(0)
    return nnx.Param(init(key, tuple(shape), jnp.float32), logical_axes=tuple(names), decay=decay, **metadata)


def trailing_dot(x: jax.Array, w: jax.Array, n_in: int, sums=None) -> jax.Array:
    """x's trailing `n_in` dims against w's leading ones (`sums`: the dot's output dtype, None = the inputs')."""
    dims = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
    return jax.lax.dot_general(x, w, (dims, ((), ())), preferred_element_type=sums)


def sums_in_float32(dtype) -> bool:
    """Whether a dot in `dtype` takes `f32_accumulated`: bf16 in a program for a CPU (the traced program's
    device; a TPU slice compiled on a CPU box keeps plain bf16 dots)."""
    return dtype == jnp.bfloat16 and target_device().platform == "cpu"


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def f32_accumulated(x: jax.Array, w: jax.Array, n_in: int) -> jax.Array:
    """`trailing_dot` with bf16 products summed in float32 and rounded once, in all three dots of forward and
    backward (autodiff of a float32-output dot would give float32 x bf16 ones). XLA:CPU ran bf16 x bf16 ->
    float32 dots 4-5x faster than bf16 -> bf16 ones (which take its float32 path) on an Intel CPU with AMX
    (benchmarks/README.md, session 27)."""
    return trailing_dot(x, w, n_in, jnp.float32).astype(x.dtype)


def _f32_accumulated_fwd(x, w, n_in):
    return f32_accumulated(x, w, n_in), (x, w)


def _f32_accumulated_bwd(n_in, saved, dy):
    x, w = saved
    batch = x.ndim - n_in
    dx = jax.lax.dot_general(dy, w, ((tuple(range(batch, dy.ndim)), tuple(range(n_in, w.ndim))), ((), ())),
                             preferred_element_type=jnp.float32)
    dw = jax.lax.dot_general(x, dy, ((tuple(range(batch)), tuple(range(batch))), ((), ())),
                             preferred_element_type=jnp.float32)
    return dx.astype(x.dtype), dw.astype(w.dtype)


f32_accumulated.defvjp(_f32_accumulated_fwd, _f32_accumulated_bwd)


class Dense(nnx.Module):
    """y = x . W + b contracting the trailing `len(in_shape)` dims of x into `out_shape` (a LinearGeneral
    whose kernel keeps its head structure, so tensor parallel can split heads by name). The kernel's
    `contract` metadata counts its contracted (input) dims: compression (N:M pruning, per-output-channel
    quantization, low-rank) reads the matmul's layout from it, whatever the family. `head=True` marks a
    task head's layer (trained under LoRA, as PEFT's modules_to_save)."""

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int], in_names: Names, out_names: Names, *,
                 rngs: nnx.Rngs, dtype=jnp.float32, init_std: float = 0.02, use_bias: bool = True, head: bool = False):
        self.n_in, self.dtype = len(in_shape), dtype
        self.kernel = param(rngs, normal(init_std), (*in_shape, *out_shape), (*in_names, *out_names),
                            contract=len(in_shape), head=head)
        self.bias = (param(rngs, jax.nn.initializers.zeros, out_shape, out_names, decay=False, head=head)
                     if use_bias else None)

    def contract(self, x: jax.Array, w: jax.Array) -> jax.Array:
        """x's trailing `n_in` dims against w's leading ones, in the compute dtype (bf16 on a CPU: summed in
        float32, `f32_accumulated`)."""
        x, w = x.astype(self.dtype), w.astype(self.dtype)
        return (f32_accumulated if sums_in_float32(self.dtype) else trailing_dot)(x, w, self.n_in)

    def __call__(self, x: jax.Array, *, deterministic: bool = True, rngs: nnx.Rngs | None = None) -> jax.Array:
        """`deterministic` / `rngs`: the step's dropout, which every dense layer takes and only LoRA's uses (the
        dropout on its factors' input); call sites pass them whatever module compression or LoRA put there."""
        y = self.contract(x, self.kernel[...])
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


REMAT = {"none": None, "full": jax.checkpoint_policies.nothing_saveable,  # model.remat -> jax.checkpoint policy
         "dots_saveable": jax.checkpoint_policies.dots_saveable,
         "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def run_layers(layers, x: jax.Array, call, *, scan: bool, remat_policy=None, rngs: nnx.Rngs | None = None):
    """x through each layer in turn, `call(layer, x, rngs) -> x`, with optional rematerialisation.

    `scan=True` stacks the layers' parameters along a new leading axis and runs one copy of the layer in
    `lax.scan`: XLA compiles the layer once instead of `len(layers)` times (compile time stops growing
    with depth), at the cost of one stacked copy of the layer parameters (and of their gradient) per step.
    Parameters stay stored per layer, so checkpoints, Hugging Face maps and compression see one layout.
    Dropout keys then come from one draw folded with the layer index. Layers of repeating kinds (Gemma's
    windowed and global ones) scan as a group: one compiled body runs a period of layers, and the layers past
    the last whole period follow as a loop. Layers with no repeating structure (e.g. compressed to different
    ranks) run as a loop."""
    step = call if remat_policy is None else nnx.remat(call, policy=remat_policy)
    n = len(layers)
    graphdefs, states = zip(*(nnx.split(layer) for layer in layers)) if scan and n > 1 else ((), ())
    period = next((p for p in range(1, n // 2 + 1) if all(graphdefs[i] == graphdefs[i % p] for i in range(n))),
                  None) if graphdefs else None
    if period is None:
        for layer in layers:
            x = step(layer, x, rngs)
        return x
    groups, key = n // period, (rngs.dropout() if rngs is not None else None)

    def layer_rngs(i):
        return nnx.Rngs(dropout=jax.random.fold_in(key, i)) if key is not None else None

    def body(h, xs):
        g, group = xs
        for j, state in enumerate(group):
            h = call(nnx.merge(graphdefs[j], state), h, layer_rngs(g * period + j))
        return h, None

    if remat_policy is not None:
        body = jax.checkpoint(body, policy=remat_policy)
    stacked = [jax.tree.map(lambda *xs: jnp.stack(xs), *states[j: groups * period: period]) for j in range(period)]
    x = jax.lax.scan(body, x, (jnp.arange(groups), stacked))[0]
    for i in range(groups * period, n):
        x = step(layers[i], x, layer_rngs(i))
    return x


def _mix32(x: jax.Array) -> jax.Array:
    """A bijective 32-bit integer hash with full avalanche (Wellons' "lowbias32", from hash-prospector)."""
    x ^= x >> 16
    x *= jnp.uint32(0x7FEB352D)
    x ^= x >> 15
    x *= jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def dropout_keep(key: jax.Array, shape: Sequence[int], rate: float) -> jax.Array:
    """Boolean mask, True with probability 1 - rate (to 2^-32), for every element of `shape`.

    The bits are a keyed hash of each element's (row, column) index rather than a `jax.random` draw:
    `jax.random.bernoulli` (threefry, 20 rounds) took 5.5 ms for one (4096, 384) mask on the 2-core CPU box
    and rbg/unsafe_rbg 16 ms, against 0.3 ms for this; the MiniLM 32 x 128 train step ran 1.06-1.12x
    faster than with flax's `nnx.Dropout` (benchmarks/README.md). The key itself still comes from
    `jax.random` (one per dropout site and step), so runs replay exactly. The index is global, so the mask
    is the same however the array is sharded; rows (all leading dims) and columns are hashed separately,
    so arrays beyond 2^32 elements do not wrap."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    k = key.reshape(-1).astype(jnp.uint32)
    lead = tuple(shape[:-1])
    row_hash = _mix32(k[0])
    if lead:  # row = ((i0 * n1) + i1) * n2 + ... over the leading dims
        rows = sum(jax.lax.broadcasted_iota(jnp.uint32, (*lead, 1), axis) * jnp.uint32(int(np.prod(lead[axis + 1:])))
                   for axis in range(len(lead)))
        row_hash = _mix32(rows ^ k[0])
    bits = _mix32(_mix32(jax.lax.broadcasted_iota(jnp.uint32, tuple(shape), len(shape) - 1) ^ row_hash) + k[-1])
    return bits >= jnp.uint32(min(round(rate * 2.0**32), 2**32 - 1))


def dropout(x: jax.Array, key: jax.Array, rate: float) -> jax.Array:
    """Inverted dropout: kept values scaled by 1 / (1 - rate), the mask from `dropout_keep`."""
    keep = dropout_keep(key, x.shape, rate)
    return jnp.where(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros((), x.dtype))


class Dropout(nnx.Module):
    """`dropout` when `deterministic` is False, with one key drawn from `rngs.dropout` per call."""

    def __init__(self, rate: float):
        self.rate = rate

    def __call__(self, x: jax.Array, *, deterministic: bool, rngs: nnx.Rngs | None) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        return dropout(x, rngs.dropout(), self.rate)

    def key(self, *, deterministic: bool, rngs: nnx.Rngs | None) -> tuple[jax.Array, float] | None:
        """(key, rate) for a dropout applied inside a function (`attend`'s probabilities), None when off."""
        return None if deterministic or self.rate == 0.0 else (rngs.dropout(), self.rate)


class Embed(nnx.Module):
    def __init__(self, num: int, features: int, names: Names, *, rngs: nnx.Rngs, dtype=jnp.float32,
                 init_std: float = 0.02):
        self.dtype, self.names = dtype, tuple(names)
        self.embedding = param(rngs, normal(init_std), (num, features), names)

    def __call__(self, ids: jax.Array) -> jax.Array:
        # Gather the FSDP-sharded feature dim first (as for any FSDP weight); gathering from a table split
        # on features and then resharding to batch-split activations is an all-to-all XLA does poorly.
        table = constrain(self.embedding[...], (self.names[0], None))
        return constrain(jnp.take(table, ids, axis=0).astype(self.dtype), ("batch", "length", "embed"))

    def attend(self, x: jax.Array) -> jax.Array:
        """x . table^T: the table used as an output layer (tied LM heads); bf16 on a CPU sums in float32, as
        `Dense.contract` does."""
        x, table = x.astype(self.dtype), self.embedding[...].astype(self.dtype)
        if sums_in_float32(self.dtype):
            return f32_accumulated(x, table.T, 1)
        return jnp.einsum("...d,vd->...v", x, table)


def _normalize(x: jax.Array, eps: float, center: bool) -> tuple[jax.Array, jax.Array]:
    """(x - mean) / std for LayerNorm, x / rms for RMSNorm, over the last axis; also 1 / std."""
    if center:
        x = x - x.mean(-1, keepdims=True)
    r = jax.lax.rsqrt(jnp.square(x).mean(-1, keepdims=True) + eps)
    return x * r, r


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float, center: bool) -> jax.Array:
    """LayerNorm (`center`) or RMSNorm of float32 `x`, times `scale` plus `bias`.

    The backward pass is written out (the textbook dx = r * (g - mean(g) - x_hat * mean(g * x_hat)) with
    g = dy * scale) rather than differentiated through mean and variance: the same numbers, but XLA:CPU runs the
    autodiff graph ~15% slower per decoder step (benchmarks/README.md, "Decoder step on CPU")."""
    return _norm_fwd(x, scale, bias, eps, center)[0]


def _norm_fwd(x, scale, bias, eps, center):
    x_hat, r = _normalize(x, eps, center)
    return x_hat * scale + bias, (x_hat, r, scale)


def _norm_bwd(eps, center, saved, dy):
    x_hat, r, scale = saved
    g = dy * scale
    dx = g - x_hat * (g * x_hat).mean(-1, keepdims=True)
    batch_axes = tuple(range(dy.ndim - 1))
    if not center:  # RMSNorm: no mean removed, and its bias is the scalar 0
        return r * dx, (dy * x_hat).sum(batch_axes), dy.sum()
    return r * (dx - g.mean(-1, keepdims=True)), (dy * x_hat).sum(batch_axes), dy.sum(batch_axes)


norm.defvjp(_norm_fwd, _norm_bwd)


class LayerNorm(nnx.Module):
    """LayerNorm whose statistics are float32 whatever the compute dtype (bf16 variance is too coarse)."""

    def __init__(self, features: int, eps: float, *, dtype=jnp.float32):
        self.eps, self.dtype = eps, dtype
        self.scale = param(None, jax.nn.initializers.ones, (features,), ("embed",), decay=False)
        self.bias = param(None, jax.nn.initializers.zeros, (features,), ("embed",), decay=False)

    def __call__(self, x: jax.Array) -> jax.Array:
        return norm(x.astype(jnp.float32), self.scale[...], self.bias[...], self.eps, True).astype(self.dtype)


class RMSNorm(nnx.Module):
    """RMSNorm (LLaMA): x / rms(x) * scale, statistics in float32 whatever the compute dtype. With `offset`
    1 the stored scale is the difference from one, x / rms(x) * (1 + scale), initialised to zero (Gemma's)."""

    def __init__(self, features: int, eps: float, *, dtype=jnp.float32, names: Names = ("embed",),
                 offset: float = 0.0):
        self.eps, self.dtype, self.offset = eps, dtype, offset
        init = jax.nn.initializers.zeros if offset else jax.nn.initializers.ones
        self.scale = param(None, init, (features,), names, decay=False)

    def __call__(self, x: jax.Array) -> jax.Array:
        zero, scale = jnp.zeros((), jnp.float32), self.scale[...]
        return norm(x.astype(jnp.float32), scale + self.offset if self.offset else scale, zero, self.eps,
                    False).astype(self.dtype)


ATTENTION = ("auto", "xla")  # model.attention_impl


HEADS = ("batch", "length", "heads", "kv")  # the logical names of queries, keys and values split into heads


def fused_kernel(impl: str, q: jax.Array, k: jax.Array) -> str | None:
    """The `jax.nn.dot_product_attention` implementation to ask for: cuDNN's fused (flash) attention where
    `impl` is auto and it runs: an NVIDIA GPU of compute capability >= 8.0, bf16/fp16, a head width that is a
    multiple of 8 up to 128 (256 from Hopper on), queries as long as the keys, an even length (training
    and prefill; a KV-cache decode step stays on XLA), and a sharding cuDNN's partitioner takes (queries, keys
    and values alike, split by batch and heads only). None (XLA's einsum-softmax-einsum) otherwise, which jax
    itself picks when asked for nothing."""
    device = target_device()
    if impl != "auto" or q.dtype not in (jnp.bfloat16, jnp.float16) or device.platform != "gpu":
        return None
    capability = tuple(int(c) for c in getattr(device, "compute_capability", "0.0").split("."))
    head, (t, s) = q.shape[-1], (q.shape[1], k.shape[1])
    fits = (device.device_kind.startswith("NVIDIA") and capability >= (8, 0) and head % 8 == 0
            and head <= (256 if capability >= (9, 0) else 128) and t == s and t % 2 == 0)
    q_spec, k_spec = ((tuple(activation_spec(HEADS, x.shape)) + (None,) * 4)[:4] for x in (q, k))
    shardable = q_spec == k_spec and q_spec[1] is None and q_spec[3] is None
    return "cudnn" if fits and shardable else None


def cache_heads_first() -> bool:
    """Whether a KV cache is laid out (batch, key heads, slots, head dim), as `written_out` reads keys and values:
    in programs for a CPU, where that path runs and a (batch, slots, ...) cache was transposed whole at every
    token step (~20% of a 124M-parameter decoder's step at 208 positions, growing with the context). Elsewhere
    (batch, slots, key heads, head dim), as `jax.nn.dot_product_attention` reads them."""
    return target_device().platform == "cpu"


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None, dtype, impl: str = "auto",
           scale: float | None = None, softcap: float = 0.0, drop: tuple[jax.Array, float] | None = None,
           kv_heads_first: bool = False):
    """`jax.nn.dot_product_attention` in q's dtype (keys and values, e.g. from a KV cache, are cast to it),
    returned in `dtype`, on the kernel `fused_kernel` picks; scores are scaled by `scale` (None: one over the
    square root of the head width), and with `softcap` become softcap * tanh(scores / softcap) before the
    mask; `drop` = (key, rate) drops attention probabilities out (HF's attention_probs_dropout_prob). Neither
    step is in `jax.nn.dot_product_attention`, so either takes the written-out path (`written_out`), as does
    every program for a CPU (the traced program's device: a TPU slice compiled on a CPU box keeps the
    library's kernel), where its layout makes training steps 2-10% faster. fp16 runs in float32 on CPU:
    XLA:CPU has no fp16 x fp16 -> fp32 dot (F16_F16_F32), which the attention backward pass uses. cuDNN
    takes the mask as an additive bias of the full (batch, 1, q, k) shape, so a padding mask (batch, 1, 1, k)
    is broadcast, and a query that sees no key (a packed row's padding) sees them all, as in XLA's kernel:
    cuDNN's gradient for a fully masked row is NaN, which would reach the projections' weight gradients.
    `kv_heads_first`: k and v are (batch, key heads, length, head dim), as a KV cache in `cache_heads_first`
    layout, rather than (batch, length, key heads, head dim)."""
    cpu = target_device().platform == "cpu"
    if dtype == jnp.float16 and cpu:
        q = q.astype(jnp.float32)
    k, v = k.astype(q.dtype), v.astype(q.dtype)
    if softcap or drop or cpu:
        return written_out(q, k, v, mask, scale or q.shape[-1] ** -0.5, softcap, drop,
                           kv_heads_first=kv_heads_first).astype(dtype)
    if kv_heads_first:
        k, v = (x.transpose(0, 2, 1, 3) for x in (k, v))
    kernel = fused_kernel(impl, q, k)
    if kernel and mask is not None:
        mask = jnp.broadcast_to(mask, (q.shape[0], 1, q.shape[1], k.shape[1]))
        mask = mask | ~mask.any(-1, keepdims=True)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation=kernel).astype(dtype)


def written_out(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None, scale: float, cap: float = 0.0,
                drop: tuple[jax.Array, float] | None = None, kv_heads_first: bool = False):
    """Attention as einsums, for the steps `jax.nn.dot_product_attention` has not: tanh soft-capped scores
    (`cap`: Gemma 2's attn_logit_softcapping) and dropout on the probabilities (`drop` = (key, rate), after
    the softmax as in HF's eager attention). Scores and softmax in float32, keys and values shared by each
    group of query heads. `mask` broadcasts to (batch, 1, q, k); a query that sees no key sees them all, as in
    XLA's kernel. The dots are 4-D, heads before positions, with each key head's group of query heads stacked
    along the queries: XLA:CPU runs them ~25% faster than in (batch, length, heads, dim) order or with a
    separate group axis (benchmarks/README.md, session 27). `kv_heads_first`: k and v come in that order already
    (a KV cache: `cache_heads_first`)."""
    b, t, heads, d = q.shape
    if not kv_heads_first:
        k, v = (x.transpose(0, 2, 1, 3) for x in (k, v))  # (batch, key heads, length, dim)
    kv_heads = k.shape[1]
    group = heads // kv_heads
    q = q.reshape(b, t, kv_heads, group, d).transpose(0, 2, 3, 1, 4).reshape(b, kv_heads, group * t, d)
    scores = jnp.einsum("bkqd,bksd->bkqs", q, k, preferred_element_type=jnp.float32) * scale
    if cap:
        scores = cap * jnp.tanh(scores / cap)
    if mask is not None:  # the queries axis holds the group's heads one after another
        scores = jnp.where(jnp.tile(mask, (1, 1, group, 1)) if mask.shape[2] > 1 else mask, scores,
                           jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    if drop:  # the mask is drawn over (batch, heads, q, k) in head order, whatever the grouping
        probs = dropout(probs.reshape(b, heads, t, -1), *drop).reshape(probs.shape)
    y = jnp.einsum("bkqs,bksd->bkqd", probs.astype(v.dtype), v)
    return y.reshape(b, kv_heads, group, t, d).transpose(0, 3, 1, 2, 4).reshape(b, t, heads, d)


class SelfAttention(nnx.Module):
    """Multi-head self-attention through `attend` (cuDNN's fused kernel on NVIDIA GPUs: `fused_kernel`), with
    dropout on the attention probabilities at `dropout` (fused kernels have none, so training with it runs
    the written-out attention); hidden dropout is applied by the caller."""

    def __init__(self, hidden: int, heads: int, *, rngs: nnx.Rngs, dtype=jnp.float32, init_std: float = 0.02,
                 impl: str = "auto", dropout: float = 0.0):
        head_dim = hidden // heads
        self.dtype, self.impl = dtype, impl
        proj = dict(rngs=rngs, dtype=dtype, init_std=init_std)
        self.query = Dense((hidden,), (heads, head_dim), ("embed",), ("heads", "kv"), **proj)
        self.key = Dense((hidden,), (heads, head_dim), ("embed",), ("heads", "kv"), **proj)
        self.value = Dense((hidden,), (heads, head_dim), ("embed",), ("heads", "kv"), **proj)
        self.out = Dense((heads, head_dim), (hidden,), ("heads", "kv"), ("embed",), **proj)
        self.dropout = Dropout(dropout)

    def __call__(self, x: jax.Array, mask: jax.Array | None, *, deterministic: bool = True,
                 rngs: nnx.Rngs | None = None) -> jax.Array:
        drop = dict(deterministic=deterministic, rngs=rngs)
        q, k, v = (constrain(proj(x, **drop), HEADS) for proj in (self.query, self.key, self.value))
        y = attend(q, k, v, mask, self.dtype, self.impl, drop=self.dropout.key(**drop))
        return constrain(self.out(constrain(y, HEADS), **drop), ("batch", "length", "embed"))


class Mlp(nnx.Module):
    def __init__(self, hidden: int, intermediate: int, *, activation: str, rngs: nnx.Rngs, dtype=jnp.float32,
                 init_std: float = 0.02):
        proj = dict(rngs=rngs, dtype=dtype, init_std=init_std)
        self.activation = activation
        self.wi = Dense((hidden,), (intermediate,), ("embed",), ("mlp",), **proj)
        self.wo = Dense((intermediate,), (hidden,), ("mlp",), ("embed",), **proj)

    def __call__(self, x: jax.Array, *, deterministic: bool = True, rngs: nnx.Rngs | None = None) -> jax.Array:
        drop = dict(deterministic=deterministic, rngs=rngs)
        h = constrain(ACTIVATIONS[self.activation](self.wi(x, **drop)), ("batch", "length", "mlp"))
        return constrain(self.wo(h, **drop), ("batch", "length", "embed"))
