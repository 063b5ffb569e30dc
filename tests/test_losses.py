"""Loss sums: label smoothing equals Hugging Face's LabelSmoother and optax's smoothed targets; evaluation
takes the objective's extra terms out again."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxbatch import losses


def _batch(shape, classes, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (*shape, classes)).astype(np.float32)
    labels = rng.integers(0, classes, shape).astype(np.int32)
    labels.reshape(-1)[::3] = losses.IGNORE_INDEX
    return logits, labels


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_label_smoothing_is_cross_entropy_against_smoothed_targets(eps):
    logits, labels = _batch((4, 6), 5)
    w = labels != losses.IGNORE_INDEX
    safe = np.where(w, labels, 0)
    smoothed = optax.smooth_labels(jax_one_hot(safe, 5), eps)
    expected = float(np.sum(np.asarray(optax.softmax_cross_entropy(logits, smoothed)) * w))
    sums, _ = losses.classification_sums(jnp.asarray(logits), jnp.asarray(labels), eps)
    assert float(sums["loss_sum"]) == pytest.approx(expected, rel=1e-5)
    lm = losses.lm_sums(jnp.asarray(logits), jnp.asarray(labels), label_smoothing=eps)
    assert float(lm["loss_sum"]) == pytest.approx(expected, rel=1e-5)
    plain = losses.lm_sums(jnp.asarray(logits), jnp.asarray(labels))
    # the term alone is reported, so evaluation can take it out: loss_sum - label_smoothing = cross-entropy
    assert float(lm["loss_sum"] - lm.get("label_smoothing", 0.0)) == pytest.approx(float(plain["loss_sum"]), rel=1e-6)
    assert ("label_smoothing" in lm) == (eps > 0)


def test_label_smoothing_equals_hugging_faces_label_smoother():
    torch = pytest.importorskip("torch")
    from transformers.trainer_pt_utils import LabelSmoother

    logits, labels = _batch((3, 7), 9, seed=1)
    theirs = LabelSmoother(epsilon=0.2)({"logits": torch.tensor(logits)}, torch.tensor(labels.astype(np.int64)))
    sums, _ = losses.classification_sums(jnp.asarray(logits), jnp.asarray(labels), 0.2)
    assert float(sums["loss_sum"] / sums["weight"]) == pytest.approx(float(theirs), rel=1e-5)


def test_a_single_logit_head_smooths_its_binary_target():
    logits, labels = _batch((8,), 1, seed=2)
    labels = np.where(labels == losses.IGNORE_INDEX, labels, np.arange(8) % 2).astype(np.int32)
    w = labels != losses.IGNORE_INDEX
    target = np.where(w, labels, 0) * 0.8 + 0.1
    expected = float(np.sum(np.asarray(optax.sigmoid_binary_cross_entropy(logits[:, 0], target)) * w))
    sums, _ = losses.classification_sums(jnp.asarray(logits), jnp.asarray(labels), 0.2)
    assert float(sums["loss_sum"]) == pytest.approx(expected, rel=1e-5)


def jax_one_hot(labels, classes):
    return np.eye(classes, dtype=np.float32)[labels]


def test_multi_label_sums_are_pytorchs_bce_with_logits_over_labelled_examples():
    """HF's multi-label loss is BCEWithLogitsLoss, the mean over examples x classes: the sums give it exactly,
    an unlabelled example (a NaN row, eval padding) counts nowhere, and `correct` counts right 0/1 decisions."""
    import torch

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (6, 5)).astype(np.float32)
    labels = (rng.random((6, 5)) < 0.4).astype(np.float32)
    labels[[1, 4]] = np.nan
    sums, out = losses.multi_label_sums(jnp.asarray(logits), jnp.asarray(labels))
    keep = [0, 2, 3, 5]
    expected = torch.nn.BCEWithLogitsLoss()(torch.tensor(logits[keep]), torch.tensor(labels[keep])).item()
    assert float(sums["weight"]) == 4 * 5
    assert float(sums["loss_sum"] / sums["weight"]) == pytest.approx(expected, rel=1e-6)
    np.testing.assert_array_equal(out["preds"], logits > 0)
    np.testing.assert_allclose(out["probs"], 1 / (1 + np.exp(-logits)), rtol=1e-6)
    assert float(sums["correct"]) == ((logits[keep] > 0) == (labels[keep] > 0.5)).sum()


@pytest.mark.parametrize("tiles", [1, 3, 7])
def test_tiled_lm_sums_equal_the_whole_logits_and_their_gradients(tiles):
    """7 positions in 1, 3 (padded to 9) or 7 pieces; some positions unlabelled, one row wholly; z-loss and label
    smoothing on: every sum, and the gradients of the loss with respect to the hidden states and the head."""
    rng = np.random.default_rng(0)
    hidden = jnp.asarray(rng.normal(size=(3, 7, 5)), jnp.float32)
    weight = jnp.asarray(rng.normal(size=(5, 11)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 11, (3, 7)), jnp.int32).at[0, 2].set(-100).at[2].set(-100)
    head = lambda w: lambda h: 3.0 * jnp.tanh(h @ w / 3.0)  # noqa: E731 (a softcapped head)

    def sums(h, w, tiled):
        if tiled:
            return losses.tiled_lm_sums(h, head(w), labels, tiles, z_loss=1e-2, label_smoothing=0.1)
        return losses.lm_sums(head(w)(h), labels, z_loss=1e-2, label_smoothing=0.1)

    want, got = sums(hidden, weight, False), sums(hidden, weight, True)
    assert want.keys() == got.keys()
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-6, err_msg=key)
    grad = lambda tiled: jax.grad(lambda h, w: sums(h, w, tiled)["loss_sum"], argnums=(0, 1))(hidden, weight)  # noqa: E731
    for g, w in zip(grad(True), grad(False)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
