"""k micro-batches == one k-times-larger batch, token-weighted, for both implementations."""

import jax
import numpy as np
import pytest

from conftest import params_numpy, random_batch, run_steps, tiny_config


@pytest.fixture(scope="module")
def big_batch_run():
    cfg = tiny_config("model.hidden_dropout=0", "train.batch_size=32", "mesh.data=2", "mesh.fsdp=2", "mesh.model=2")
    batches = [random_batch(cfg, 0), random_batch(cfg, 1)]
    state, history, _, _ = run_steps(cfg, batches)
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
    state, history, _, _ = run_steps(cfg, batches)
    assert int(state.step) == 2
    for got, want, w in zip(history, ref_history, weights):
        np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5)
        assert got["weight"] == w
    got = params_numpy(state)
    for key in ref_params:
        np.testing.assert_allclose(got[key], ref_params[key], atol=2e-6, rtol=1e-5, err_msg=key)


def test_mean_of_means_would_differ(big_batch_run):
    """The check above is sharp: averaging per-micro-batch mean losses is measurably not the big-batch loss."""
    _, batches, _, ref_history = big_batch_run
    from jaxbatch import accumulate

    b = batches[0]
    micro = jax.tree.map(np.asarray, accumulate.split_micro_batches(b, 4))
    cfg = tiny_config("model.hidden_dropout=0", "train.batch_size=8", "mesh.data=1")
    means = []
    for i in range(4):
        mb = {k: v[i] for k, v in micro.items()}
        _, hist, _, _ = run_steps(cfg, [mb], jax.devices()[:1])
        means.append(hist[0]["loss"])
    assert abs(np.mean(means) - ref_history[0]["loss"]) > 1e-4
