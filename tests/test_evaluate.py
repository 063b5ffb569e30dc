"""Length-bucketed evaluation: the same sums and per-example outputs, in the split's order, as evaluating
every example at seq_len."""

import jax
import numpy as np
import pytest

from conftest import random_batch, run_steps, tiny_config
from jaxbatch import evaluate


@pytest.mark.parametrize("task", ["token", "sequence"])
def test_bucketed_eval_equals_full_length_eval(task):
    cfg = tiny_config(f"model.task={task}", "data.seq_len=32", "train.batch_size=8", "mesh.data=2", "mesh.model=2")
    rng = np.random.default_rng(0)
    arrays = random_batch(cfg, 1, batch_size=45)  # not a multiple of the eval batch: a padded last batch
    short = rng.random(45) < 0.6  # most examples short, in no particular order
    for k in ("input_ids", "attention_mask"):
        arrays[k][short, 8:] = 0
    if task == "token":
        arrays["labels"][short, 8:] = -100
    _, _, run = run_steps(cfg, [], jax.devices()[:4])
    full_sums, full = evaluate.outputs(run, run.state.params, arrays, buckets=1)
    sums, out = evaluate.outputs(run, run.state.params, arrays, buckets=3)
    assert sums.keys() == full_sums.keys()
    for k in sums:
        assert sums[k] == pytest.approx(full_sums[k], rel=1e-5), k
    real = arrays["attention_mask"].astype(bool)
    for k in full:  # per-token outputs are compared where there are tokens (padding positions are not computed)
        assert out[k].shape == full[k].shape
        a, b = (x[real] if task == "token" and x.ndim >= 2 else x for x in (out[k], full[k]))
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=k)
