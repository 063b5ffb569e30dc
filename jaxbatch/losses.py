"""Loss and metric *sums* of the heads model families use (token and sequence classification, next-token
language modelling).

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


def lm_sums(logits: jax.Array, labels: jax.Array, z_loss: float = 0.0) -> dict:
    """Next-token cross-entropy summed over real targets (labels are the inputs shifted by one, IGNORE_INDEX
    at padding and document boundaries), their count and correct argmax predictions. With `z_loss` the
    objective adds z_loss * log(Z)^2 per token (PaLM), also reported alone as `z_loss`."""
    weights = labels != IGNORE_INDEX
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, -1)
    target = jnp.take_along_axis(logits, jnp.where(weights, labels, 0)[..., None], -1)[..., 0]
    w = weights.astype(jnp.float32)
    sums = dict(loss_sum=jnp.sum(jnp.where(weights, lse - target, 0.0)), weight=jnp.sum(w),
                correct=jnp.sum((jnp.argmax(logits, -1) == labels) * w))
    if z_loss:
        sums["z_loss"] = z_loss * jnp.sum(jnp.where(weights, jnp.square(lse), 0.0))
        sums["loss_sum"] = sums["loss_sum"] + sums["z_loss"]
    return sums
