"""k micro-batches == one k-times-larger batch, token-weighted, for both implementations."""

import jax
import numpy as np
import pytest

from conftest import params_numpy, random_batch, run_steps, tiny_config


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
    for key in ref_params:
        np.testing.assert_allclose(got[key], ref_params[key], atol=2e-6, rtol=1e-5, err_msg=key)


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
