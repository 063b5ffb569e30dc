"""Batch ramp-up: the schedule is Megatron's, every step is the exact gradient of its batch, and a run
stopped mid-ramp resumes bit for bit."""

import dataclasses
import json

import numpy as np
import pytest

from conftest import params_numpy, tiny_config
from jaxbatch import config, rampup, train
from jaxbatch.data import pipeline
from jaxbatch.errors import ConfigError

RAMP = ["train.batch_size=32", "train.rampup_start=8", "train.rampup_samples=96", "train.steps=10",
        "data.seq_len=16", "data.num_train=160", "train.log_every=1", "train.eval_every=0"]


def test_schedule_grows_by_increments_of_samples_seen():
    t = tiny_config(*RAMP, "train.accum_steps=4").train  # micro-batch 8 = the default increment
    sizes = rampup.batch_sizes(t)
    # 3 increments over 96 samples, 32 samples each: b = 8 + floor(seen / 32) * 8 (Megatron's rule)
    expect, seen = [], 0
    for _ in range(10):
        b = min(32, 8 + int(seen // 32) * 8)
        expect.append(b)
        seen += b
    assert sizes == expect == [8, 8, 8, 8, 16, 16, 24, 24, 32, 32]
    assert rampup.distinct(t) == [8, 16, 24, 32]
    assert [rampup.accum_for(b, 8) for b in (8, 16, 24, 32)] == [1, 2, 3, 4]
    # increment 12: 2 increments of 48 samples; the last one is capped at the batch
    assert rampup.batch_sizes(dataclasses.replace(t, rampup_increment=12)) == [8, 8, 8, 8, 8, 8, 20, 20, 20, 32]
    assert rampup.batch_sizes(dataclasses.replace(t, rampup_samples=0)) == [32] * 10


def test_epochs_become_the_fewest_steps_whose_batches_hold_that_many_examples():
    t = tiny_config(*RAMP, "train.accum_steps=4").train
    sizes = rampup.batch_sizes(dataclasses.replace(t, steps=40))  # 8 8 8 8 16 16 24 24 32 32 ...
    for examples in (1, 8, 9, 20, 24, 112, 113, 160, 176, 177, 500):
        steps = rampup.steps_for(t, examples)
        assert sum(sizes[:steps]) >= examples > sum(sizes[:steps - 1]), examples
    flat = dataclasses.replace(t, rampup_samples=0)
    assert [rampup.steps_for(flat, n) for n in (1, 32, 33, 96, 1.5 * 64)] == [1, 1, 2, 3, 3]


def test_pipeline_serves_each_step_its_batch_without_repeats():
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 17, size=160)
    mask = (np.arange(16)[None] < lengths[:, None]).astype(np.int32)
    arrays = {"input_ids": np.arange(160)[:, None] * mask, "attention_mask": mask, "labels": np.arange(160)}
    sizes = [8, 8, 8, 8, 16, 16, 24, 24, 32, 32]
    batches = list(pipeline.train_dataset(arrays, 32, 10, seed=1, num_buckets=2, batch_sizes=sizes))
    assert [len(b["labels"]) for b in batches] == sizes
    first_epoch = np.concatenate([b["labels"] for b in batches[:7]])  # 88 examples < 160: no repeats yet
    assert len(set(first_epoch)) == len(first_epoch)
    for b in batches:  # each batch is cut to a bucket that holds its longest example
        assert b["input_ids"].shape[1] in (8, 16) and b["attention_mask"].sum(1).max() <= b["input_ids"].shape[1]
    hosts = [list(pipeline.train_dataset(arrays, 32, 10, seed=1, process_index=p, process_count=2, num_buckets=2,
                                         batch_sizes=sizes)) for p in range(2)]
    for one, h0, h1 in zip(batches, *hosts):  # joined in host order: one host's batch, row for row
        np.testing.assert_array_equal(np.concatenate([h0["labels"], h1["labels"]]), one["labels"])


def test_ramp_is_exact_under_accumulation_and_resumes_mid_ramp_bitwise(tmp_path):
    """The same ramp with k=4 micro-batches and with none gives the same parameters (each step is the
    gradient of its whole batch); a run stopped at step 5 (batch 16, mid-ramp) resumes bit for bit."""
    base = [*RAMP, "mesh.data=8", "model.hidden_dropout=0"]
    whole = train.train(tiny_config(*base, "train.accum_steps=4", f"train.run_dir={tmp_path / 'whole'}"))
    rows = [r for r in map(json.loads, open(tmp_path / "whole" / "metrics.jsonl")) if r["kind"] == "train"]
    assert [r["batch_size"] for r in rows] == [8, 8, 8, 8, 16, 16, 24, 24, 32, 32]
    assert rows[-1]["samples"] == whole.summary["samples"] == 176
    one_shot = train.train(tiny_config(*base, "train.accum_steps=1", "train.rampup_increment=8",
                                       f"train.run_dir={tmp_path / 'one'}"))
    a, b = params_numpy(whole.state), params_numpy(one_shot.state)
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-6, err_msg=key)

    part = tmp_path / "part"
    train.train(tiny_config(*base, "train.accum_steps=4", "train.stop_after=5", "checkpoint.every=5",
                            f"train.run_dir={part}"))
    rest = train.train(tiny_config(*base, "train.accum_steps=4", "checkpoint.every=5", f"train.run_dir={part}"))
    c = params_numpy(rest.state)
    for key in a:
        np.testing.assert_array_equal(c[key], a[key], err_msg=key)
    assert rest.summary["samples"] == 176


@pytest.mark.parametrize("override, message", [
    (["train.rampup_start=0"], "train.rampup_start=0 must be between 1"),
    (["train.rampup_start=32"], "train.rampup_start=32 must be between 1"),
    (["train.rampup_start=12", "train.accum_steps=4"], "global batch of 12"),
    (["train.accum_impl=multisteps", "train.accum_steps=4"], "needs train.accum_impl=scan"),
])
def test_bad_ramps_are_named(override, message):
    cfg = tiny_config(*RAMP, "mesh.data=4", *override)
    with pytest.raises(ConfigError, match=message):
        config.validate(cfg, 4)
