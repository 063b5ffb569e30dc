"""Exact resume: an interrupted run continues bit-for-bit like one that never stopped, onto any mesh."""

import json

import jax
import numpy as np

from conftest import compiles, event_records, params_numpy, run_steps, tiny_config
from jaxbatch import checkpoint, config, train

ARGS = ["train.steps=8", "train.log_every=1", "train.eval_every=0", "train.batch_size=16", "data.seq_len=16",
        "data.num_train=96", "checkpoint.every=4", "data.buckets=2"]  # dropout on; 96/16 = 6 steps an epoch


def _losses(run_dir):
    return {r["step"]: r["loss"] for r in map(json.loads, open(f"{run_dir}/metrics.jsonl")) if r["kind"] == "train"}


def test_interrupted_run_resumes_bitwise(tmp_path):
    whole = train.train(tiny_config(*ARGS, "mesh.data=8", f"train.run_dir={tmp_path / 'whole'}"))
    part = tmp_path / "part"
    first = train.train(tiny_config(*ARGS, "mesh.data=8", "train.stop_after=3", f"train.run_dir={part}"))
    assert int(first.state.step) == 3
    assert checkpoint.Checkpointer(part / "checkpoints").latest_step() == 3
    # resume on a different mesh: Orbax reshards the saved state onto FSDP x TP
    rest = train.train(tiny_config(*ARGS, "mesh.data=2", "mesh.fsdp=2", "mesh.model=2", f"train.run_dir={part}"))
    a, b = params_numpy(whole.state), params_numpy(rest.state)
    for key in a:  # across an epoch boundary (step 6) and length buckets: the iterator resumed exactly
        np.testing.assert_allclose(b[key], a[key], rtol=2e-6, atol=2e-7, err_msg=key)
    la, lb = _losses(tmp_path / "whole"), _losses(part)
    assert sorted(lb) == list(range(1, 9))
    np.testing.assert_allclose([lb[s] for s in range(1, 9)], [la[s] for s in range(1, 9)], rtol=1e-6)
    assert checkpoint.Checkpointer(part / "checkpoints").latest_step() == 8
    # TensorBoard: the resumed segment's file hides the first segment's events from step 4 on (no doubled curves)
    from tensorboardX.proto import event_pb2

    first_file, second_file = sorted((part / "tensorboard").glob("events.out.tfevents.*"))
    starts = [[e.step for e in map(event_pb2.Event.FromString, event_records(f)) if e.HasField("session_log")]
              for f in (first_file, second_file)]
    assert starts == [[], [4]]


def test_same_mesh_resume_is_bit_identical(tmp_path):
    whole = train.train(tiny_config(*ARGS, "mesh.data=2", "mesh.fsdp=4", f"train.run_dir={tmp_path / 'whole'}"))
    part = tmp_path / "part"
    train.train(tiny_config(*ARGS, "mesh.data=2", "mesh.fsdp=4", "train.stop_after=5", f"train.run_dir={part}"))
    rest = train.train(tiny_config(*ARGS, "mesh.data=2", "mesh.fsdp=4", f"train.run_dir={part}"))
    a, b = params_numpy(whole.state), params_numpy(rest.state)
    for key in a:
        np.testing.assert_array_equal(b[key], a[key], err_msg=key)
    # the spec read as JSON, before JAX starts (distributed.wants_one_arena), is Orbax's; a damaged newest one is
    # passed over for the one before it
    ckpts = part / "checkpoints"
    newest = checkpoint.Checkpointer(ckpts, read_only=True).latest_step()
    assert checkpoint.newest_saved_spec(ckpts) == checkpoint.Checkpointer(ckpts, read_only=True).read_spec(newest)
    saved = ckpts / str(newest) / "spec" / "metadata"
    text = saved.read_text()
    saved.write_text("{not json")
    assert checkpoint.newest_saved_spec(ckpts).model == whole.spec.model
    saved.write_text(text)
    # running a finished run again restores it and only evaluates
    again = train.train(tiny_config(*ARGS, "mesh.data=2", "mesh.fsdp=4", f"train.run_dir={part}"))
    assert again.summary["final_eval"]["loss"] == rest.summary["final_eval"]["loss"]
    assert jax.tree.all(jax.tree.map(np.array_equal, params_numpy(again.state), b))


def test_fingerprint_compiled_ahead():
    """compile_fingerprint leaves nothing to compile at the first save."""
    _, _, run = run_steps(tiny_config("mesh.data=2"), [], jax.devices()[:2])
    with compiles() as ahead:
        checkpoint.compile_fingerprint(run.state)
    with compiles() as at_save:
        sums, finite = checkpoint.fingerprint(run.state)
    assert ahead and at_save == []
    assert finite and len(sums) == len(jax.tree.leaves(run.state))


def test_best_tracker_counts_strict_improvements_and_never_takes_nan():
    best = checkpoint.Best.of(config.build(["checkpoint.best_metric=entity_f1"]).checkpoint)
    assert (best.name, best.mode) == ("entity_f1", "max")
    assert checkpoint.Best.of(config.build(["checkpoint.best_metric=perplexity"]).checkpoint).mode == "min"
    assert checkpoint.Best.of(config.Config().checkpoint) is None
    for step, value in [(2, float("nan")), (4, 0.5), (6, 0.5), (8, 0.7), (10, 0.6)]:
        best = best.update(value, step)
    assert (best.value, best.step, best.since) == (0.7, 8, 1)  # a tie is no improvement; NaN is never the best
    saved = best.metrics(0.6)
    assert best.score(saved) == -float("inf")  # only a checkpoint that set a new best ranks
    assert best.score(best.update(0.9, 12).metrics(0.9)) == 0.9
    assert checkpoint.Best("entity_f1", "max").resumed(saved) == best
    assert checkpoint.Best("loss", "min").resumed(saved) == checkpoint.Best("loss", "min")  # another metric: anew
