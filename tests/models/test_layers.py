"""Shared building blocks: the hand-written normalisation backward pass equals autodiff's; dropout masks keep
the asked fraction, independently per element and per key, and do not depend on how the array is sharded."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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
