"""Loss and metric *sums* of the heads model families use (token and sequence classification, multi-label
classification, regression, next-token language modelling, answer spans).

Sums, not means: micro-batches, shards, hosts and eval batches then combine exactly, and the step
divides by the global batch's count once (see accumulate.py). Positions whose label is IGNORE_INDEX (NaN
for float targets: scores and multi-label indicators) carry no loss, as in Hugging Face.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

IGNORE_INDEX = -100  # a class id marking "no label"; float targets (scores, multi-label indicators) mark it with NaN
REGRESSION, MULTI_LABEL = "regression", "multi_label_classification"  # model.problem_type's heads with float targets
FLOAT_HEADS = (REGRESSION, MULTI_LABEL)  # sequence heads whose targets are floats and that HF names by problem_type
# sums a training objective adds to the cross-entropy in `loss_sum` (each also reported alone); evaluation
# takes them out again, so its loss is the plain cross-entropy whatever the regularisers
OBJECTIVE_TERMS = ("z_loss", "label_smoothing")


def label_dtype(model_cfg) -> np.dtype:
    """Class ids are int32; a regression head's scores and a multi-label head's 0/1 indicators (one per class)
    are float32, as Hugging Face's MSELoss and BCEWithLogitsLoss take them."""
    return np.dtype(np.float32 if model_cfg.problem_type in FLOAT_HEADS else np.int32)


def per_output(model_cfg) -> bool:
    """Whether a sequence head's targets are one per output (batch, num_labels): a multi-label head's
    indicators, a regression's scores when it has several outputs; else one class id or score per example."""
    return model_cfg.problem_type == MULTI_LABEL or (model_cfg.problem_type == REGRESSION and model_cfg.num_labels > 1)


def no_label(dtype) -> float | int:
    """What marks an unlabelled position in labels of `dtype`: NaN for targets, IGNORE_INDEX for class ids."""
    return np.nan if np.issubdtype(dtype, np.floating) else IGNORE_INDEX


def labelled(labels):
    """Where `labels` (numpy or jax) hold a label: not IGNORE_INDEX, or not NaN for float targets."""
    return labels == labels if np.issubdtype(labels.dtype, np.floating) else labels != IGNORE_INDEX


def regression_sums(logits: jax.Array, labels: jax.Array) -> tuple[dict, dict]:
    """Summed squared error against float targets (NaN: unlabelled) and their count, so the step's mean is
    HF's MSELoss: of one output against (batch,) targets, or of every output against (batch, outputs) ones;
    predictions are the scores."""
    weights = labelled(labels)
    scores = logits.astype(jnp.float32)
    scores = scores[..., 0] if labels.ndim < scores.ndim else scores
    error = jnp.where(weights, scores - jnp.where(weights, labels, 0.0), 0.0)
    return dict(loss_sum=jnp.sum(jnp.square(error)), weight=jnp.sum(weights.astype(jnp.float32))), dict(preds=scores)


def multi_label_sums(logits: jax.Array, labels: jax.Array) -> tuple[dict, dict]:
    """A sigmoid and binary cross-entropy per class (HF's BCEWithLogitsLoss: its mean over examples x classes is
    the step's loss), summed over labelled examples' (example, class) pairs, their count and the pairs decided
    right (accuracy: one minus the Hamming loss); predictions are each class's 0/1 decision (logit > 0, i.e.
    probability > 0.5) and its probability. `labels` (batch, classes) hold 0/1 (or soft targets), NaN for
    an unlabelled example."""
    weights = labelled(labels)
    logits = logits.astype(jnp.float32)
    targets = jnp.where(weights, labels, 0.0)
    w = weights.astype(jnp.float32)
    preds = (logits > 0).astype(jnp.int32)
    return (dict(loss_sum=jnp.sum(optax.sigmoid_binary_cross_entropy(logits, targets) * w), weight=jnp.sum(w),
                 correct=jnp.sum((preds == (targets > 0.5)) * w)),
            dict(preds=preds, probs=jax.nn.sigmoid(logits)))


def _smoothing(logits: jax.Array, target_logit: jax.Array, w: jax.Array, epsilon: float) -> jax.Array:
    """Label smoothing's sum over the cross-entropy: targets (1 - eps) one-hot + eps / K (HF's LabelSmoother,
    optax.smooth_labels) cost eps * (mean_k(-log p_k) - (-log p_y)) = eps * (logit_y - mean_k logit_k) more."""
    return epsilon * jnp.sum(w * (target_logit - jnp.mean(logits, -1)))


def classification_sums(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> tuple[dict, dict]:
    """Summed float32 loss over labelled positions, their count and correct predictions; predictions
    are the argmax label and the class probabilities.

    Softmax cross-entropy for more than one logit; sigmoid + binary cross-entropy for a single logit
    (probabilities are then [1-p, p]). `label_smoothing` eps: targets (1 - eps) one-hot + eps / classes
    (a single logit's target moves eps / 2 towards 1/2)."""
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
    if label_smoothing:
        safe = jnp.where(weights, labels, 0)
        if logits.shape[-1] == 1:  # BCE(x, y') - BCE(x, y) = -x (y' - y), y' = y (1 - eps) + eps / 2
            extra = label_smoothing * jnp.sum(w * logits[..., 0] * (safe - 0.5))
        else:
            extra = _smoothing(logits, jnp.take_along_axis(logits, safe[..., None], -1)[..., 0], w, label_smoothing)
        sums["label_smoothing"] = extra
        sums["loss_sum"] = sums["loss_sum"] + extra
    return sums, dict(preds=preds, probs=probs)


def head_sums(logits: jax.Array, labels: jax.Array, model_cfg) -> tuple[dict, dict]:
    """A classification head's sums and predictions, as its model.problem_type says: regression scores, a
    multi-label head's classes, or else one class per position (token) or example (sequence)."""
    if model_cfg.problem_type == REGRESSION:
        return regression_sums(logits, labels)
    if model_cfg.problem_type == MULTI_LABEL:
        return multi_label_sums(logits, labels)
    return classification_sums(logits, labels, model_cfg.label_smoothing)


def span_sums(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> tuple[dict, dict]:
    """Extractive question answering: (batch, length, 2) start and end logits against (batch, 2) start and end
    tokens; the loss sum is each labelled window's (start + end cross-entropy) / 2, so the step's mean is HF's
    *ForQuestionAnswering loss. The softmax runs over the real tokens (`mask`): HF's runs over the padding too,
    which makes its loss depend on how far a batch was padded; equal to it where nothing is padded.
    `correct` counts windows whose start and end are both the argmax. Predictions: each position's logits."""
    weights = labels[:, 0] != IGNORE_INDEX
    logits = jnp.where(mask[..., None] > 0, logits.astype(jnp.float32), -1e30)
    lse = jax.nn.logsumexp(logits, 1)  # (batch, 2)
    safe = jnp.where(weights[:, None], labels, 0)
    target = jnp.take_along_axis(logits, safe[:, None, :], 1)[:, 0]
    w = weights.astype(jnp.float32)
    hit = jnp.all(jnp.argmax(logits, 1) == labels, -1)
    return (dict(loss_sum=jnp.sum(w * jnp.sum(lse - target, -1)) / 2, weight=jnp.sum(w), correct=jnp.sum(hit * w)),
            dict(start_logits=logits[..., 0], end_logits=logits[..., 1]))


def mlm_predictions(length: int, probability: float) -> int:
    """The most positions of a row of `length` a masked LM predicts: the binomial mean plus 8 standard deviations
    (52 of 128 at 15%), which a row's draw passes with probability < 1e-15. data/masking.py caps each row there,
    and the head computes logits at only that many positions (the original masked-LM pretraining code's
    max_predictions_per_seq, 20 of 128, which its data capped at)."""
    mean = probability * length
    return min(length, math.ceil(mean + 8 * math.sqrt(mean * (1 - probability))))


def predicted_positions(labels: jax.Array, most: int) -> jax.Array:
    """(batch, most) indices of each row's labelled positions, in order, then unlabelled ones (whose labels are
    IGNORE_INDEX: they add nothing); a row must have at most `most` labels (mlm_predictions)."""
    length = labels.shape[1]
    return jax.lax.top_k(jnp.where(labels != IGNORE_INDEX, length - jnp.arange(length), 0), most)[1]


def tiled_lm_sums(hidden: jax.Array, head: Callable[[jax.Array], jax.Array], labels: jax.Array, tiles: int,
                  z_loss: float = 0.0, label_smoothing: float = 0.0) -> dict:
    """lm_sums(head(hidden), labels, ...) computed `tiles` pieces of the sequence at a time, in a scan whose body
    is recomputed in the backward pass, so only one piece's (batch, length / tiles, vocab) logits and their
    gradient exist at once (MaxText's vocabulary tiling). Pieces along the length keep the batch's sharding; a
    length `tiles` does not divide is padded with unlabelled positions, which add nothing. Equal to the untiled
    sums up to float32 summation order (tests/test_losses.py)."""
    batch, length = labels.shape
    size = -(-length // tiles)
    pad = size * tiles - length
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    labels = jnp.pad(labels, ((0, 0), (0, pad)), constant_values=IGNORE_INDEX)
    pieces = (jnp.moveaxis(hidden.reshape(batch, tiles, size, -1), 1, 0),
              jnp.moveaxis(labels.reshape(batch, tiles, size), 1, 0))

    def piece(x):
        return lm_sums(head(x[0]), x[1], z_loss, label_smoothing)

    def add(total, x):
        return jax.tree.map(jnp.add, total, piece(x)), None

    first = jax.eval_shape(piece, jax.tree.map(lambda a: a[0], pieces))
    zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), first)
    return jax.lax.scan(jax.checkpoint(add), zero, pieces)[0]


def lm_sums(logits: jax.Array, labels: jax.Array, z_loss: float = 0.0, label_smoothing: float = 0.0) -> dict:
    """Next-token cross-entropy summed over real targets (labels are the inputs shifted by one, IGNORE_INDEX
    at padding and document boundaries), their count and correct argmax predictions. With `z_loss` the
    objective adds z_loss * log(Z)^2 per token (PaLM), also reported alone as `z_loss`; with
    `label_smoothing` the targets mix in the uniform distribution over the vocabulary."""
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
    if label_smoothing:
        sums["label_smoothing"] = _smoothing(logits, target, w, label_smoothing)
        sums["loss_sum"] = sums["loss_sum"] + sums["label_smoothing"]
    return sums
