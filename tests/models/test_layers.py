"""Shared building blocks: the hand-written normalisation backward pass equals autodiff's; dropout masks keep
the asked fraction, independently per element and per key, and do not depend on how the array is sharded;
attention with dropout on its probabilities equals a per-head reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxbatch.models import layers


def autodiff_norm(x, scale, bias, eps, center):
    if center:
        x = x - x.mean(-1, keepdims=True)
    return x * jax.lax.rsqrt(jnp.square(x).mean(-1, keepdims=True) + eps) * scale + bias


@pytest.mark.parametrize("center", [True, False], ids=["layernorm", "rmsnorm"])
def test_norm_matches_autodiff_values_and_gradients(center):
    kx, ks, kb, kd = jax.random.split(jax.random.key(0), 4)
    x = 3 * jax.random.normal(kx, (2, 7, 48)) + 1.5  # off-centre, not unit scale: every term of dx matters
    scale, dy = jax.random.normal(ks, (48,)), jax.random.normal(kd, (2, 7, 48))
    bias = jax.random.normal(kb, (48,)) if center else jnp.zeros(())
    ours = lambda *a: (layers.norm(*a, 1e-5, center) * dy).sum()  # noqa: E731
    theirs = lambda *a: (autodiff_norm(*a, 1e-5, center) * dy).sum()  # noqa: E731
    np.testing.assert_allclose(layers.norm(x, scale, bias, 1e-5, center), autodiff_norm(x, scale, bias, 1e-5, center),
                               atol=1e-6)
    for a, b in zip(jax.grad(ours, (0, 1, 2))(x, scale, bias), jax.grad(theirs, (0, 1, 2))(x, scale, bias)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_norm_gradient_in_bf16_compute_comes_back_in_bf16():
    ln = layers.LayerNorm(16, 1e-5, dtype=jnp.bfloat16)
    x = jax.random.normal(jax.random.key(1), (4, 16), jnp.bfloat16)
    g = jax.grad(lambda x: ln(x).astype(jnp.float32).sum())(x)
    assert ln(x).dtype == jnp.bfloat16 and g.dtype == jnp.bfloat16


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_dropout_keeps_the_asked_fraction_independently(rate):
    keep = np.asarray(layers.dropout_keep(jax.random.key(0), (64, 96, 384), rate))
    n, p = keep.size, 1.0 - rate
    sigma = np.sqrt(p * (1 - p) / n)
    assert abs(keep.mean() - p) < 5 * sigma
    # neighbours along columns, rows and the batch, and the same element under another key, are independent
    other = np.asarray(layers.dropout_keep(jax.random.key(1), keep.shape, rate))
    pairs = {"column": (keep[..., 1:], keep[..., :-1]), "row": (keep[:, 1:], keep[:, :-1]),
             "batch": (keep[1:], keep[:-1]), "key": (keep, other)}
    for name, (a, b) in pairs.items():
        both = (a & b).mean()
        assert abs(both - p * p) < 5 * np.sqrt(p * p * (1 - p * p) / a.size), name
    # every row and every column position keeps about the same fraction (no stuck lanes or rows)
    per_column, per_row = keep.reshape(-1, 384).mean(0), keep.reshape(-1, 384).mean(1)
    assert abs(per_column - p).max() < 6 * np.sqrt(p * (1 - p) / (64 * 96))
    assert abs(per_row - p).max() < 6 * np.sqrt(p * (1 - p) / 384)


def test_dropout_mask_is_the_same_however_the_array_is_sharded():
    from jax.sharding import NamedSharding, PartitionSpec as P

    key, shape = jax.random.key(7), (8, 16, 64)
    expected = layers.dropout_keep(key, shape, 0.1)
    mesh = jax.make_mesh((2, 4), ("a", "b"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    for spec in (P("a", "b"), P(None, "a", "b"), P(("a", "b"))):
        sharded = jax.jit(lambda k: layers.dropout_keep(k, shape, 0.1), out_shardings=NamedSharding(mesh, spec))(key)
        np.testing.assert_array_equal(sharded, expected, err_msg=str(spec))


def test_dropout_scales_kept_values_and_is_off_when_deterministic():
    from flax import nnx

    x = jnp.arange(1.0, 1 + 4 * 256).reshape(4, 256)
    drop = layers.Dropout(0.25)
    np.testing.assert_array_equal(drop(x, deterministic=True, rngs=None), x)
    y = drop(x, deterministic=False, rngs=nnx.Rngs(dropout=0))
    kept = np.asarray(y) != 0
    np.testing.assert_allclose(np.asarray(y)[kept], np.asarray(x)[kept] / 0.75, rtol=1e-6)
    again = drop(x, deterministic=False, rngs=nnx.Rngs(dropout=0))
    np.testing.assert_array_equal(y, again)


def _numpy_attention(q, k, v, mask, keep=None, rate=0.0):
    """Per-head float64 reference: softmax(q k / sqrt(d)) over the keys the mask shows, then, where `keep`
    is given, the probabilities times keep / (1 - rate) (HF's eager attention), times v."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    b, t, heads, d = q.shape
    group = heads // k.shape[2]
    out = np.zeros_like(q)
    for h in range(heads):
        scores = np.einsum("btd,bsd->bts", q[:, :, h], k[:, :, h // group]) / np.sqrt(d)
        seen = np.broadcast_to(np.asarray(mask)[:, 0], scores.shape)
        blind = ~seen.any(-1, keepdims=True)  # a query that sees no key weighs them all alike, as XLA's kernel
        scores = np.where(blind, 0.0, np.where(seen, scores, -np.inf))
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        if keep is not None:
            probs = probs * np.asarray(keep)[:, h] / (1 - rate)
        out[:, :, h] = np.einsum("bts,bsd->btd", probs, v[:, :, h // group])
    return out


@pytest.mark.parametrize("kind", ["padding", "gqa"])
def test_attention_dropout_drops_each_heads_probabilities_and_is_unbiased(kind):
    q, k, v, mask, valid = (jnp.asarray(a, jnp.float32) if a.dtype == jnp.bfloat16 else a
                            for a in _attention_inputs(kind, b=3, t=16, heads=4, d=8))
    rate, key = 0.3, jax.random.key(5)
    got = layers.attend(q, k, v, mask, jnp.float32, drop=(key, rate))
    keep = layers.dropout_keep(key, (3, 4, 16, 16), rate)  # (batch, heads, q, k), in head order
    np.testing.assert_allclose(got, _numpy_attention(q, k, v, mask, keep, rate), atol=2e-6)
    plain = layers.attend(q, k, v, mask, jnp.float32)
    np.testing.assert_allclose(plain, _numpy_attention(q, k, v, mask), atol=2e-6)
    np.testing.assert_allclose(jax.nn.dot_product_attention(q, k, v, mask=mask), plain, atol=2e-6)
    # over many keys the dropped-out attention averages to the plain one (inverted dropout is unbiased)
    many = jax.vmap(lambda key: layers.attend(q, k, v, mask, jnp.float32, drop=(key, rate)))(
        jax.random.split(jax.random.key(6), 2000))
    spread = np.asarray(many).std(0) / np.sqrt(2000)
    assert (np.abs(np.asarray(many).mean(0) - np.asarray(plain)) < 5 * spread + 1e-6).mean() > 0.999


# The attention kernel (model.attention_impl). CI has no GPU: there, auto must be XLA's kernel exactly; the
# cuDNN tests run where JAX sees an NVIDIA GPU (JAX_PLATFORMS=cuda; benchmarks/README.md, device.py).
needs_gpu = pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN's fused attention needs an NVIDIA GPU")


def _attention_inputs(kind: str, b: int = 4, t: int = 64, heads: int = 4, d: int = 32):
    """bf16 q, k, v and a mask of the model's form: padding (batch, 1, 1, k), as the encoders build it, or
    causal within packed documents with a padded tail (batch, 1, q, k), as the decoders do; and the query
    rows that see any key."""
    kq, kk, kv = jax.random.split(jax.random.key(1), 3)
    kv_heads = heads // 2 if kind == "gqa" else heads
    q = jax.random.normal(kq, (b, t, heads, d), jnp.bfloat16)
    k, v = (jax.random.normal(key, (b, t, kv_heads, d), jnp.bfloat16) for key in (kk, kv))
    lengths = jnp.array([t, t // 2, t - 6, 10][:b])
    valid = jnp.arange(t)[None, :] < lengths[:, None]
    if kind == "padding":
        return q, k, v, valid[:, None, None, :], valid
    segment = jnp.where(valid, 1 + (jnp.arange(t)[None, :] >= lengths[:, None] // 3), 0)  # two documents
    mask = (segment[:, :, None] == segment[:, None, :]) & jnp.tril(jnp.ones((t, t), bool)) & valid[:, None, :]
    return q, k, v, mask[:, None], valid


def _program_for(monkeypatch, platform: str) -> None:
    """Trace as if for a device of `platform` (`layers.target_device`, which the layers' choices read)."""
    monkeypatch.setattr(layers, "target_device", lambda: type("Device", (), dict(platform=platform))())


def _attention_and_grads(impl: str, q, k, v, mask, valid):
    g = jax.random.normal(jax.random.key(2), q.shape, jnp.float32) * valid[:, :, None, None]

    def loss(q, k, v):
        y = layers.attend(q, k, v, mask, q.dtype, impl=impl)
        return (y.astype(jnp.float32) * g).sum(), y * valid[:, :, None, None]

    (_, y), grads = jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True))(q, k, v)
    return [np.asarray(a, np.float32) for a in (y, *grads)]


def test_auto_attention_is_xlas_kernel_off_nvidia_gpus():
    if jax.default_backend() == "gpu":
        pytest.skip("on a GPU, auto picks cuDNN (the tests below)")
    q, k, v, mask, valid = _attention_inputs("packed")
    assert layers.fused_kernel("auto", q, k) is None
    auto, xla = (_attention_and_grads(impl, q, k, v, mask, valid) for impl in ("auto", "xla"))
    for a, b in zip(auto, xla):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", ["padding", "packed", "gqa"])
def test_cpu_programs_take_the_written_out_attention_equal_to_xlas_kernel(kind, monkeypatch):
    """A program for a CPU runs `written_out` (its layout is faster on XLA:CPU): outputs and gradients equal
    `jax.nn.dot_product_attention`'s, rows that see no key included; one for another platform keeps it."""
    q, k, v, mask, valid = (a.astype(jnp.float32) if a.dtype == jnp.bfloat16 else a
                            for a in _attention_inputs(kind, t=32))
    _program_for(monkeypatch, "cpu")
    got = _attention_and_grads("auto", q, k, v, mask, valid)
    _program_for(monkeypatch, "tpu")
    monkeypatch.setattr(layers, "written_out", None)  # a TPU program must not reach it
    library = _attention_and_grads("auto", q, k, v, mask, valid)
    for a, b in zip(got, library):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-5)
    assert np.abs(got[0]).max() > 0.1 and all(np.abs(g).max() > 0.01 for g in got[1:])


def test_auto_asks_for_cudnn_only_where_its_kernel_runs(monkeypatch):
    """The selection rule itself, against a stand-in device (CI has no GPU)."""
    def device(kind="NVIDIA H200", capability="9.0", platform="gpu"):
        return type("Device", (), dict(platform=platform, device_kind=kind, compute_capability=capability))()

    def pick(dev, q_shape=(2, 64, 4, 64), k_len=64, dtype=jnp.bfloat16, impl="auto"):  # 2 key/value heads
        monkeypatch.setattr(layers, "target_device", lambda: dev)
        q = jax.ShapeDtypeStruct(q_shape, dtype)
        return layers.fused_kernel(impl, q, jax.ShapeDtypeStruct((q_shape[0], k_len, 2, q_shape[3]), dtype))

    assert pick(device()) == "cudnn" and pick(device(), dtype=jnp.float16) == "cudnn"
    assert pick(device(), q_shape=(2, 64, 4, 256)) == "cudnn"  # Hopper: head width up to 256
    assert pick(device(capability="8.0"), q_shape=(2, 64, 4, 256)) is None  # Ampere: up to 128
    for off in (pick(device(), impl="xla"), pick(device(), dtype=jnp.float32), pick(device(capability="7.5")),
                pick(device(kind="AMD Instinct MI300X")), pick(device(platform="tpu", kind="TPU v5 lite")),
                pick(device(), q_shape=(2, 64, 4, 60)), pick(device(), q_shape=(2, 1, 4, 64)),
                pick(device(), q_shape=(2, 63, 4, 64), k_len=63)):
        assert off is None
    # sharded: cuDNN's partitioner splits batch and heads only, queries, keys and values alike
    from jaxbatch import config, mesh as mesh_lib

    for model, sequence_parallel, expected in ((2, False, "cudnn"), (4, False, None), (2, True, None)):
        grid = jax.make_mesh((8 // model, 1, model), mesh_lib.AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)
        rules = tuple((n, ("model",) if sequence_parallel and n == "length" else a) for n, a in config.DEFAULT_RULES)
        with mesh_lib.activation_rules(grid, rules):  # 4 query heads, 2 key heads: 4 devices split only the first
            assert pick(device(), q_shape=(8, 64, 4, 64)) == expected, (model, sequence_parallel)


def test_fp16_attention_runs_in_float32_only_when_the_program_is_for_a_cpu(monkeypatch):
    """XLA:CPU lacks the fp16 x fp16 -> fp32 dot the backward pass uses, so a CPU program computes fp16
    attention in float32; a program traced for a TPU slice on this CPU box (`plan --target`) keeps fp16."""
    q = jnp.ones((2, 8, 4, 16), jnp.float16)

    def dot_types(platform):
        _program_for(monkeypatch, platform)
        jaxpr = jax.make_jaxpr(lambda q: layers.attend(q, q, q, None, jnp.float16, impl="xla"))(q)
        return {str(e.invars[0].aval.dtype) for e in jaxpr.eqns if e.primitive.name == "dot_general"}

    assert dot_types("cpu") == {"float32"} and dot_types("tpu") == {"float16"}


@needs_gpu
@pytest.mark.parametrize("kind", ["padding", "packed", "gqa"])
def test_cudnn_attention_equals_xla_on_a_gpu(kind):
    q, k, v, mask, valid = _attention_inputs(kind)
    assert layers.fused_kernel("auto", q, k) == "cudnn" and layers.fused_kernel("xla", q, k) is None
    assert layers.fused_kernel("auto", q[:, :1], k) is None  # a KV-cache decode step stays on XLA
    exact = [np.asarray(a, np.float32) for a in _attention_and_grads("xla", *(
        x.astype(jnp.float32) if x.dtype == jnp.bfloat16 else x for x in (q, k, v)), mask, valid)]
    for name, fused, xla, ref in zip(("output", "dq", "dk", "dv"), _attention_and_grads("auto", q, k, v, mask, valid),
                                     _attention_and_grads("xla", q, k, v, mask, valid), exact):
        # both bf16 kernels are as far from a float32 reference as bf16 rounding puts them; a wrong mask is O(1)
        scale = np.abs(ref).max()
        assert np.abs(fused - ref).max() < 0.02 * scale + 2 * np.abs(xla - ref).max(), name


@needs_gpu
@pytest.mark.parametrize("preset", ["tiny", "gpt-tiny", "llama-tiny"])
def test_models_train_alike_with_either_kernel_on_a_gpu(preset):
    """Three bf16 steps of each family (padded encoder rows; packed decoder documents) with cuDNN's kernel
    and with XLA's: the same losses to bf16 rounding."""
    from conftest import random_batch, run_steps, tiny_config
    from jaxbatch.data import packing

    extra = [f"model.preset={preset}", "precision.policy=bf16", "data.seq_len=32", "train.batch_size=8"]
    if preset != "tiny":
        extra += ["model.task=lm", "data.name=text", "model.vocab_size=97"]
    losses = {}
    for impl in ("auto", "xla"):
        cfg = tiny_config(*extra, f"model.attention_impl={impl}")
        if preset == "tiny":
            batches = [random_batch(cfg, seed) for seed in range(3)]
        else:
            rng = np.random.default_rng(0)
            docs = [list(rng.integers(0, 97, rng.integers(3, 20))) for _ in range(90)]
            rows = packing.pack(docs, 32)
            batches = [{k: v[8 * i: 8 * i + 8] for k, v in rows.items()} for i in range(3)]
        _, history, _ = run_steps(cfg, batches, jax.devices()[:1])
        losses[impl] = [float(h["loss"]) for h in history]
    np.testing.assert_allclose(losses["auto"], losses["xla"], rtol=2e-2)


@pytest.mark.parametrize("n_in", [1, 2])
def test_bf16_dense_on_a_cpu_sums_in_float32_in_all_three_dots(n_in, monkeypatch):
    """A bf16 layer in a CPU program (XLA:CPU's fast bf16 dots are those with float32 sums): outputs and
    both gradients are the float32 dots rounded once to bf16 (within one bf16 step), and a program for another
    platform keeps the plain bf16 dot; the two agree to bf16 rounding."""
    _program_for(monkeypatch, "cpu")
    shape_in = (4, 6) if n_in == 2 else (24,)
    dense = layers.Dense(shape_in, (8,), ("heads", "kv")[:n_in], ("embed",), rngs=nnx.Rngs(0), dtype=jnp.bfloat16,
                         use_bias=False)
    x = jax.random.normal(jax.random.key(1), (3, 5, *shape_in), jnp.float32).astype(jnp.bfloat16)
    dy = jax.random.normal(jax.random.key(2), (3, 5, 8), jnp.float32).astype(jnp.bfloat16)
    w = dense.kernel[...].astype(jnp.bfloat16)

    def grads(contract):
        y, vjp = jax.vjp(lambda x, w: contract(dense, x, w), x, w)
        return (y, *vjp(dy))

    got = jax.jit(lambda: grads(layers.Dense.contract))()
    x32, w32, dy32 = (a.astype(jnp.float32) for a in (x, w, dy))
    lead = tuple(range(2))
    want = (jnp.tensordot(x32, w32, n_in), jnp.tensordot(dy32, w32, ((2,), (n_in,))),
            jnp.tensordot(x32, dy32, (lead, lead)))
    for a, b in zip(got, want):
        assert a.dtype == jnp.bfloat16 and a.shape == b.shape
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=8e-3, atol=1e-6)
    _program_for(monkeypatch, "tpu")
    monkeypatch.setattr(layers, "f32_accumulated", None)  # a TPU program must not reach it
    plain = jax.jit(lambda: grads(layers.Dense.contract))()
    for a, b in zip(got, plain):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=2e-2, atol=2e-2)


def test_a_bf16_tied_output_layer_on_a_cpu_sums_in_float32(monkeypatch):
    """`Embed.attend` (tied LM heads) takes the same float32-summed bf16 dots on a CPU: logits and the table's
    gradient within one bf16 step of float32's, and within bf16 rounding of the plain bf16 einsum."""
    embed = layers.Embed(50, 16, ("vocab", "embed"), rngs=nnx.Rngs(0), dtype=jnp.bfloat16)
    x = jax.random.normal(jax.random.key(1), (3, 5, 16), jnp.float32).astype(jnp.bfloat16)
    dy = jax.random.normal(jax.random.key(2), (3, 5, 50), jnp.float32).astype(jnp.bfloat16)

    def logits_and_grads(platform):
        _program_for(monkeypatch, platform)
        y, vjp = jax.vjp(lambda x, table: layers.Embed.attend(
            type("Table", (), dict(dtype=jnp.bfloat16, embedding=table))(), x), x, embed.embedding[...])
        return [np.asarray(a, np.float32) for a in (y, *vjp(dy))]

    calls = []
    monkeypatch.setattr(layers, "f32_accumulated", lambda *a, f=layers.f32_accumulated: calls.append(1) or f(*a))
    cpu = logits_and_grads("cpu")
    assert calls
    monkeypatch.setattr(layers, "f32_accumulated", None)  # a TPU program must not reach it
    tpu = logits_and_grads("tpu")
    x32, t32, dy32 = (np.asarray(a, np.float32) for a in (x, embed.embedding[...].astype(jnp.bfloat16), dy))
    want = (x32 @ t32.T, dy32 @ t32, np.einsum("btv,btd->vd", dy32, x32))
    for got, plain, ref in zip(cpu, tpu, want):
        np.testing.assert_allclose(got, ref, rtol=8e-3, atol=1e-6)
        np.testing.assert_allclose(got, plain, rtol=2e-2, atol=2e-2)
