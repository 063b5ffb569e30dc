"""k micro-batches == one k-times-larger batch, token-weighted, for both implementations."""

import jax
import numpy as np
import pytest

from conftest import params_numpy, random_batch, run_steps, tiny_config
from jaxbatch import config


@pytest.fixture(scope="module")
def big_batch_run():
    cfg = tiny_config("model.hidden_dropout=0", "train.batch_size=32", "mesh.data=2", "mesh.fsdp=2", "mesh.model=2")
    batches = [random_batch(cfg, 0), random_batch(cfg, 1)]
    state, history, _ = run_steps(cfg, batches)
    return cfg, batches, params_numpy(state), history


@pytest.mark.parametrize("impl", ["scan", "multisteps"])
@pytest.mark.parametrize("k", [2, 4])
def test_accumulation_equals_big_batch(impl, k, big_batch_run):
    _, batches, ref_params, ref_history = big_batch_run
    # micro-batches have different numbers of real tokens (random lengths and ignored labels)
    weights = [(b["labels"] != -100).sum() for b in batches]
    micro_weights = [(batches[0]["labels"].reshape(16 // k * 2, k, -1)[:, i] != -100).sum() for i in range(k)]
    assert len(set(micro_weights)) > 1, micro_weights
    cfg = tiny_config("model.hidden_dropout=0", "train.batch_size=32", f"train.accum_steps={k}",
                      f"train.accum_impl={impl}", "mesh.data=2", "mesh.fsdp=2", "mesh.model=2")
    state, history, _ = run_steps(cfg, batches)
    assert int(state.step) == 2
    for got, want, w in zip(history, ref_history, weights):
        np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5)
        assert got["weight"] == w
    got = params_numpy(state)
    for key in ref_params:  # Adam divides by each gradient's own size: an embedding row whose few uses nearly cancel
        # moves by ~3e-6 (3e-3 of its step, lr 1e-3) when k micro-batch sums round otherwise (the Intel Xeon box)
        np.testing.assert_allclose(got[key], ref_params[key], atol=5e-6, rtol=1e-5, err_msg=key)


def test_mean_of_means_would_differ(big_batch_run):
    """The check above is sharp: averaging per-micro-batch mean losses is measurably not the token-weighted
    big-batch loss on these batches."""
    from jaxbatch import accumulate

    micro = jax.tree.map(np.asarray, accumulate.split_micro_batches(big_batch_run[1][0], 4))
    micro = [{k: v[i] for k, v in micro.items()} for i in range(4)]
    cfg = tiny_config("model.hidden_dropout=0", "train.batch_size=8", "mesh.data=1")
    state, _, run = run_steps(cfg, micro[:1], jax.devices()[:1])
    sums = [jax.device_get(run.steps.eval(state.params, mb)[0]) for mb in micro]
    weighted = sum(s["loss_sum"] for s in sums) / sum(s["weight"] for s in sums)
    mean_of_means = np.mean([s["loss_sum"] / s["weight"] for s in sums])
    assert abs(mean_of_means - weighted) > 1e-3


def test_a_regression_head_accumulates_exactly_with_either_implementation():
    """Float targets (NaN: unlabelled) through both accumulation paths equal the one big batch: the reported
    mean squared error and the parameters (MultiSteps combines only the means the head reports)."""
    cfg = tiny_config("model.hidden_dropout=0", "train.batch_size=32", "model.task=sequence",
                      "model.problem_type=regression", "model.num_labels=1", "mesh.data=2", "mesh.fsdp=2",
                      "mesh.model=2")
    rng = np.random.default_rng(5)
    batches = []
    for seed in (0, 1):
        batch = random_batch(cfg, seed)
        batch["labels"] = np.where(rng.random(32) < 0.8, rng.uniform(0, 5, 32), np.nan).astype(np.float32)
        batches.append(batch)
    reference, want, _ = run_steps(cfg, batches)
    want_params = params_numpy(reference)
    for impl in ("scan", "multisteps"):
        state, got, _ = run_steps(config.replace(cfg, train__accum_steps=2, train__accum_impl=impl), batches)
        for g, w, b in zip(got, want, batches):
            assert "accuracy" not in g and g["weight"] == np.isfinite(b["labels"]).sum()
            np.testing.assert_allclose(g["loss"], w["loss"], rtol=1e-5)
        for key, value in params_numpy(state).items():
            np.testing.assert_allclose(value, want_params[key], atol=2e-6, rtol=1e-5, err_msg=f"{impl} {key}")


def test_a_masked_lm_accumulates_exactly_with_either_implementation():
    """Masked-LM batches (each micro-batch's head at its own predicted positions) through both accumulation
    paths equal the one big batch, on a 2x2x2 mesh (the tied vocabulary table split over 'model')."""
    from jaxbatch.data import masking

    cfg = tiny_config("model.hidden_dropout=0", "train.batch_size=32", "model.task=lm", "data.name=text",
                      "mesh.data=2", "mesh.fsdp=2", "mesh.model=2")
    how = masking.Masking(0.15, 4, cfg.model.vocab_size, (0, 1, 2, 3, 4))
    batches = []
    for seed in (0, 1):
        batch = random_batch(cfg, seed)
        rows = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        batches.append(how.apply(how.candidates(rows), [(seed, 0, 0, r) for r in range(32)]))
    reference, want, _ = run_steps(cfg, batches)
    want_params = params_numpy(reference)
    for impl in ("scan", "multisteps"):
        state, got, _ = run_steps(config.replace(cfg, train__accum_steps=4, train__accum_impl=impl), batches)
        for g, w, b in zip(got, want, batches):
            assert g["weight"] == (b["labels"] != -100).sum() > 0
            np.testing.assert_allclose(g["loss"], w["loss"], rtol=1e-5)
        for key, value in params_numpy(state).items():
            np.testing.assert_allclose(value, want_params[key], atol=2e-6, rtol=1e-5, err_msg=f"{impl} {key}")
