"""Low-rank factorisation: a Dense kernel W (inputs x outputs, flattened) replaced by two Dense layers,
A (inputs x r) then B (r x outputs), from the truncated SVD W ~ U_r S_r V_r^T with A = U_r sqrt(S_r) and
B = sqrt(S_r) V_r^T. At full rank the product is W to float precision. The factors are ordinary Dense
layers (with `contract` metadata and logical axes), so they shard, prune and quantize like any other.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxbatch.models.layers import Dense


class LowRankDense(nnx.Module):
    """x -> B(A(x)): the Dense's inputs and outputs (and bias, on B), through a rank-r bottleneck whose
    axis has no logical name (it is small and stays replicated)."""

    def __init__(self, dense: Dense, rank: int):
        kernel = dense.kernel
        names = tuple(kernel.get_metadata()["logical_axes"])
        n_in = dense.n_in
        rngs = nnx.Rngs(0)
        self.a = Dense(kernel.shape[:n_in], (rank,), names[:n_in], (None,), rngs=rngs, dtype=dense.dtype,
                       use_bias=False)
        self.b = Dense((rank,), kernel.shape[n_in:], (None,), names[n_in:], rngs=rngs, dtype=dense.dtype,
                       use_bias=dense.bias is not None)

    def __call__(self, x, *, deterministic: bool = True, rngs: nnx.Rngs | None = None):  # a Dense's signature
        return self.b(self.a(x))


def _matrix(dense: Dense) -> np.ndarray:
    w = np.asarray(dense.kernel[...], np.float64)
    return w.reshape(int(np.prod(w.shape[:dense.n_in])), -1)


def spectrum(dense: Dense) -> np.ndarray:
    """Singular values of the kernel as an (inputs x outputs) matrix, largest first."""
    return np.linalg.svd(_matrix(dense), compute_uv=False)


def rank_for_energy(singular_values: np.ndarray, energy: float) -> int:
    """The smallest r whose top-r singular values hold `energy` of sum(s^2)."""
    cumulative = np.cumsum(singular_values**2) / np.sum(singular_values**2)
    return int(min(np.searchsorted(cumulative, energy - 1e-12) + 1, len(singular_values)))


def saves(dense: Dense, rank: int) -> bool:
    """Whether rank-r factors hold fewer parameters than the kernel."""
    rows, cols = _matrix(dense).shape
    return rank * (rows + cols) < rows * cols


def factorize(dense: Dense, rank: int) -> LowRankDense:
    """The LowRankDense of a trained Dense, from its truncated SVD."""
    w = _matrix(dense)
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    root = np.sqrt(s[:rank])
    low = LowRankDense(dense, rank)
    low.a.kernel.value = jnp.asarray((u[:, :rank] * root).reshape(low.a.kernel.shape), jnp.float32)
    low.b.kernel.value = jnp.asarray((root[:, None] * vt[:rank]).reshape(low.b.kernel.shape), jnp.float32)
    if dense.bias is not None:
        low.b.bias.value = dense.bias[...]
    return low
