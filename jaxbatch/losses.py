"""Loss and metric *sums* of the heads model families use (token and sequence classification).

Sums, not means: micro-batches, shards, hosts and eval batches then combine exactly, and the step
divides by the global batch's count once (see accumulate.py). Positions whose label is IGNORE_INDEX
carry no loss, as in Hugging Face.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

IGNORE_INDEX = -100


def classification_sums(logits: jax.Array, labels: jax.Array) -> tuple[dict, dict]:
    """Summed float32 loss over labelled positions, their count and correct predictions; predictions
    are the argmax label and the class probabilities.

    Softmax cross-entropy for more than one logit; sigmoid + binary cross-entropy for a single logit
    (probabilities are then [1-p, p])."""
    weights = labels != IGNORE_INDEX
    logits = logits.astype(jnp.float32)
    if logits.shape[-1] == 1:
        logit = logits[..., 0]
        losses = optax.sigmoid_binary_cross_entropy(logit, jnp.where(weights, labels, 0).astype(jnp.float32))
        preds = (logit > 0).astype(jnp.int32)
        p = jax.nn.sigmoid(logit)[..., None]
        probs = jnp.concatenate([1 - p, p], -1)
    else:
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(weights, labels, 0))
        preds = jnp.argmax(logits, -1).astype(jnp.int32)
        probs = jax.nn.softmax(logits, -1)
    w = weights.astype(jnp.float32)
    sums = dict(loss_sum=jnp.sum(losses * w), weight=jnp.sum(w), correct=jnp.sum((preds == labels) * w))
    return sums, dict(preds=preds, probs=probs)
