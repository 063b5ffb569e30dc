"""Low-rank factorisation: full rank reproduces the layer; the energy rule picks the smallest rank."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxbatch.compress import lowrank
from jaxbatch.models.layers import Dense


def test_full_rank_reproduces_the_layer_and_truncation_is_the_best_approximation():
    dense = Dense((4, 16), (48,), ("heads", "kv"), ("embed",), rngs=nnx.Rngs(0))  # contracts two dims
    dense.bias.value = jax.random.normal(jax.random.key(1), (48,))
    x = jax.random.normal(jax.random.key(2), (3, 5, 4, 16))
    full = lowrank.factorize(dense, 48)
    assert full.a.kernel.shape == (4, 16, 48) and full.b.kernel.shape == (48, 48)
    np.testing.assert_allclose(full(x), dense(x), rtol=1e-4, atol=1e-5)
    # rank r: the error of W is the tail of the spectrum (Eckart-Young), exactly
    s = lowrank.spectrum(dense)
    low = lowrank.factorize(dense, 10)
    w = np.asarray(dense.kernel[...]).reshape(64, 48)
    w10 = np.asarray(low.a.kernel[...]).reshape(64, 10) @ np.asarray(low.b.kernel[...])
    np.testing.assert_allclose(np.linalg.norm(w - w10), np.sqrt(np.sum(s[10:] ** 2)), rtol=1e-4)
    assert lowrank.saves(dense, 10) and not lowrank.saves(dense, 30)


def test_energy_rank_is_the_smallest_that_keeps_the_energy():
    s = np.array([4.0, 2.0, 1.0, 1.0])  # energies 16, 4, 1, 1 of 22
    assert lowrank.rank_for_energy(s, 16 / 22) == 1
    assert lowrank.rank_for_energy(s, 0.8) == 2
    assert lowrank.rank_for_energy(s, 21 / 22) == 3
    assert lowrank.rank_for_energy(s, 1.0) == 4
    assert lowrank.rank_for_energy(jnp.ones(5), 0.5) == 3
