"""Shared building blocks: the hand-written normalisation backward pass equals autodiff's."""

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
