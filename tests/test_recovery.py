"""Fault injection: damaged checkpoints, divergence, config drift, signals and bad input never lose work and
never report something false."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import compiles, dotted, tiny_config
from jaxbatch import checkpoint, cli, reporting, run as run_lib
from jaxbatch import train as train_lib
from jaxbatch.errors import EXIT_DIVERGED, EXIT_STOPPED, CheckpointError, WriteError

TINY = ["model.preset=tiny", "model.num_layers=1", "data.seq_len=16", "train.batch_size=16", "data.num_train=96",
        "train.log_every=1", "train.eval_every=0", "checkpoint.every=2", "train.progress=false", "mesh.data=2",
        "mesh.fsdp=2", "mesh.model=2", "optim.warmup_steps=0", "optim.schedule=constant"]


def _train(run_dir, *extra) -> int:
    return cli.main(["train", *TINY, f"train.run_dir={run_dir}", *extra])


def _params(run_dir) -> dict:
    """The newest checkpoint's parameters, restored as predict/export do."""
    restored = run_lib.restore(run_dir, ["mesh.data=2", "mesh.fsdp=2", "mesh.model=2"])
    return {dotted(p): np.asarray(jax.device_get(x)) for p, x in jax.tree_util.tree_leaves_with_path(restored.params)}


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    run = tmp_path_factory.mktemp("whole")
    assert _train(run, "train.steps=6") == 0
    return _params(run)


def _largest_array_file(step_dir: Path) -> Path:
    return max((step_dir / "state").rglob("d/*"), key=lambda p: p.stat().st_size)


def _garble(step_dir):
    f = _largest_array_file(step_dir)
    b = bytearray(f.read_bytes())
    b[len(b) // 2: len(b) // 2 + 32] = bytes(x ^ 0x5A for x in b[len(b) // 2: len(b) // 2 + 32])
    f.write_bytes(bytes(b))


FAULTS = {
    "garbled": _garble,  # decompresses fine, wrong values: only the fingerprint sees it
    "truncated": lambda d: os.truncate(_largest_array_file(d), 100),
    "missing_metadata": lambda d: (d / "state" / "_METADATA").unlink(),
    "missing_item": lambda d: __import__("shutil").rmtree(d / "state"),
    "data_position": lambda d: (d / "data" / "process_0-of-1.json").write_text('{"next_index": 3}'),  # parses
    "no_data_position": lambda d: (d / "data" / "process_0-of-1.json").unlink(),
    # as if saved by two hosts (read as by any number of hosts) that disagree on where the data stands
    "hosts_disagree": lambda d: ((d / "data" / "process_0-of-1.json").rename(d / "data" / "process_0-of-2.json"),
                                 (d / "data" / "process_1-of-2.json").write_text('{"next_index": 3}')),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_damaged_newest_checkpoint_falls_back_and_finishes_bitwise(fault, whole, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run, "train.steps=6", "train.stop_after=4") == EXIT_STOPPED
    ckpts = run / "checkpoints"
    FAULTS[fault](ckpts / "4")
    (ckpts / "5").mkdir()  # an empty step folder as well
    capsys.readouterr()
    assert _train(run, "train.steps=6") == 0
    out = capsys.readouterr().out
    assert "checkpoint step 5 is unusable" in out and "checkpoint step 4 is unusable" in out
    assert "resumed from" in out and "at step 2" in out
    assert sorted(p.name.split("-")[0] for p in (ckpts / "unusable").iterdir()) == ["4", "5"]  # kept, not deleted
    got = _params(run)
    for key in whole:
        np.testing.assert_array_equal(got[key], whole[key], err_msg=key)


def test_a_resumed_run_reports_what_an_uninterrupted_one_does(tmp_path, capsys):
    """The summary's evaluations and the gradient noise scale (a running estimate over every step) continue
    across a resume from a checkpoint saved between two logs; a checkpoint written without the loop's record
    (an older jaxbatch's) still resumes, and says what its summary lacks."""
    run, whole = tmp_path / "run", tmp_path / "whole"
    accumulating = ["train.steps=6", "train.accum_steps=2", "train.eval_every=2", "train.log_every=2",
                    "checkpoint.every=0"]
    assert _train(whole, *accumulating) == 0
    assert _train(run, *accumulating, "train.stop_after=3") == EXIT_STOPPED  # saved at 3: no log there
    assert _train(run, *accumulating) == 0

    def reported(run_dir):
        summary = json.loads((run_dir / "summary.json").read_text())
        noise = [r for r in reporting.read_metrics(run_dir) if r["kind"] == "noise_scale"]
        return summary["evals"], summary["noise_scale"], noise

    evals, b_simple, noise = reported(whole)
    assert [e["step"] for e in evals] == [2, 4, 6] and [r["step"] for r in noise] == [2, 4, 6] and b_simple
    assert reported(run) == reported(whole)
    at_eval = tmp_path / "at_eval"  # a planned stop where an evaluation is due evaluates (a signal's skips it)
    assert _train(at_eval, *accumulating, "train.stop_after=4") == EXIT_STOPPED
    assert _train(at_eval, *accumulating) == 0
    assert reported(at_eval) == reported(whole)

    record = run / "checkpoints" / "6" / "loop" / "metadata"  # a value changed on disk: not trusted
    record.write_text(record.read_text().replace(str(evals[0]["loss"]), str(evals[0]["loss"] / 2)))
    for steps, fault in ((8, None), (10, lambda: shutil.rmtree(run / "checkpoints" / "8" / "loop"))):  # or absent
        if fault:  # (as an older jaxbatch wrote it)
            fault()
        capsys.readouterr()
        assert _train(run, *accumulating[1:], f"train.steps={steps}") == 0
        assert "its summary's evaluations and noise scale start there" in capsys.readouterr().out
        assert [e["step"] for e in json.loads((run / "summary.json").read_text())["evals"]] == [steps]


def test_an_evaluation_a_signal_skipped_runs_when_the_run_resumes(tmp_path, monkeypatch):
    """SIGTERM at an evaluation step saves without evaluating (a preemption's grace period is short); the resumed
    run evaluates that step first, so its summary and metrics hold every evaluation an uninterrupted run's do."""
    args = ["train.steps=8", "train.eval_every=4"]
    whole, run = tmp_path / "whole", tmp_path / "run"
    assert _train(whole, *args) == 0
    log = reporting.Reporter.log

    def log_then_signal(self, step, metrics, kind="train"):  # after step 3: the loop stops at the end of step 4
        record = log(self, step, metrics, kind)
        if kind == "train" and step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return record

    monkeypatch.setattr(reporting.Reporter, "log", log_then_signal)
    assert _train(run, *args) == EXIT_STOPPED
    monkeypatch.undo()
    assert json.loads((run / "summary.json").read_text())["evals"] == []  # step 4's was skipped
    assert _train(run, *args) == 0

    def evaluations(run_dir):
        return (json.loads((run_dir / "summary.json").read_text())["evals"],
                [r for r in reporting.read_metrics(run_dir) if r["kind"] == "eval"])

    assert [e["step"] for e in evaluations(whole)[0]] == [4, 8] and evaluations(run) == evaluations(whole)


def test_divergence_stops_with_its_code_and_a_finite_last_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    code = _train(run, "train.steps=40", "optim.learning_rate=1e6", "train.max_bad_steps=3", "checkpoint.every=1")
    assert code == EXIT_DIVERGED
    err = capsys.readouterr().err
    assert "diverged" in err and "non-finite for 3 steps in a row" in err and "Traceback" not in err
    step = checkpoint.Checkpointer(run / "checkpoints", read_only=True).latest_step()
    assert 0 < step < 40
    assert all(np.isfinite(v).all() for v in _params(run).values())
    assert not (run / "summary.json").exists()  # nothing claims the run finished


def test_config_drift_is_refused_or_printed(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run, "train.steps=4") == 0
    summary = json.loads((run / "summary.json").read_text())
    for change, key in (("optim.learning_rate=1e-2", "optim.learning_rate"), ("train.batch_size=32", "train.batch_size"),
                        ("data.seq_len=24", "data.seq_len"), ("train.seed=1", "train.seed"),
                        ("precision.policy=bf16", "precision.policy"), ("model.num_layers=3", "model.num_layers"),
                        ("data.num_train=128", "train_digest")):
        capsys.readouterr()
        with compiles() as compiled:  # refused before anything compiles (a big model's start-up takes minutes)
            assert _train(run, "train.steps=4", change) == 2, change
        assert compiled == [], change
        err = capsys.readouterr().err
        assert key in err and "use a new train.run_dir, or checkpoint.resume=false" in err and "Traceback" not in err
    assert json.loads((run / "summary.json").read_text()) == summary  # still describes its checkpoint
    with compiles() as compiled:
        assert _train(run, "train.steps=3") == 2
    assert compiled == []
    assert "train.steps=3 is below the step of the newest checkpoint (4)" in capsys.readouterr().err
    assert _train(run, "train.steps=6", "train.log_every=2", "mesh.data=8", "mesh.fsdp=1", "mesh.model=1") == 0
    out = capsys.readouterr().out
    assert "resuming with changed settings" in out and "train.steps: 4 -> 6" in out and "resumed from" in out
    assert _train(run, "train.steps=2", "checkpoint.resume=false", "optim.learning_rate=1e-2") == 0
    assert "was moved to" in capsys.readouterr().out
    aside = next(run.glob("replaced-*"))
    assert checkpoint.Checkpointer(aside / "checkpoints", read_only=True).latest_step() == 6
    assert checkpoint.Checkpointer(run / "checkpoints", read_only=True).latest_step() == 2
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2]


def _wait_for_steps(run, n: int) -> None:
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (len(metrics.read_text().splitlines()) if metrics.is_file() else 0) < n:
        time.sleep(0.1)


def test_sigterm_ctrl_c_and_a_hang_up_save_exit_75_and_resume_bitwise(tmp_path):
    """A hang-up is the ssh session that started the run going away: its terminal is gone (writes to it
    fail), and the run saves and stops as on SIGTERM; under `nohup` it keeps running."""
    import pty

    args = [sys.executable, "-m", "jaxbatch", "train", *TINY, "checkpoint.every=0", "train.steps=60",
            "data.num_train=64", "mesh.data=8", "mesh.fsdp=1", "mesh.model=1"]
    # under `nohup` the hang-up changes nothing: the run finishes, and is the uninterrupted reference
    ignoring = subprocess.Popen(["nohup", *args, f"train.run_dir={tmp_path / 'nohup'}"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    _wait_for_steps(tmp_path / "nohup", 3)
    ignoring.send_signal(signal.SIGHUP)
    assert ignoring.wait(timeout=300) == 0
    reference = _params(tmp_path / "nohup")
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        run = tmp_path / sig.name
        if sig == signal.SIGHUP:  # the run's output on a terminal, which closes before the signal arrives
            terminal, run_side = pty.openpty()
            proc = subprocess.Popen([*args, f"train.run_dir={run}", "train.progress=true"], stdout=run_side,
                                    stderr=run_side, start_new_session=True)
            os.close(run_side)
            _wait_for_steps(run, 3)
            proc.send_signal(sig)  # as the kernel hangs up a terminal: the signal, and writes to it fail
            os.close(terminal)
            out = "stopped at step of 60 (output went to the closed terminal)"
            proc.wait(timeout=300)
        else:
            proc = subprocess.Popen([*args, f"train.run_dir={run}"], stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
            _wait_for_steps(run, 3)
            proc.send_signal(sig)
            out = proc.communicate(timeout=300)[0]
        assert proc.returncode == EXIT_STOPPED, out[-2000:]
        assert "Traceback" not in out and "stopped at step" in out and "of 60" in out and "final eval" not in out
        assert f"({sig.name}; checkpoint saved)" in out or sig == signal.SIGHUP
        step = checkpoint.Checkpointer(run / "checkpoints", read_only=True).latest_step()
        assert 3 <= step < 60
        assert json.loads((run / "summary.json").read_text())["finished"] is False
        if sig != signal.SIGTERM:  # the same stop path as SIGTERM from here on; resumed bitwise below once
            continue
        done = subprocess.run([*args, f"train.run_dir={run}"], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:]
        got = _params(run)
        for key in reference:
            np.testing.assert_array_equal(got[key], reference[key], err_msg=f"{sig.name} {key}")
        rows = [r["step"] for r in map(json.loads, open(run / "metrics.jsonl")) if r["kind"] == "train"]
        assert rows == list(range(1, 61))  # every step once: nothing doubled across the stop


BAD = [
    (["train.steps=0"], "train.steps must be > 0"),
    (["train.batch_size=0"], "train.batch_size must be > 0"),
    (["train.log_every=0"], "train.log_every must be > 0"),
    (["checkpoint.max_to_keep=-1"], "checkpoint.max_to_keep must be > 0"),
    (["data.seq_len=2"], "data.seq_len=2 leaves no room"),
    (["data.num_train=8"], "fewer than one global batch of 16"),
    (["train.run_dir=/proc/jaxbatch-run"], "train.run_dir='/proc/jaxbatch-run' is not a writable folder"),
    (["train.steps=ten"], "train.steps: cannot read 'ten' as int"),
    (["data.buckets=0"], "data.buckets must be > 0, got 0"),  # 1 = no bucketing
    (["train.seed=-5"], "train.seed must be in [0, 2**32), got -5"),  # numpy's range, checked before the data's
    (["data.shuffle_seed=4294967296"], "data.shuffle_seed must be in [0, 2**32), got 4294967296"),
]


@pytest.mark.parametrize("overrides,message", BAD)
def test_bad_input_is_one_line_and_exit_2(overrides, message, tmp_path, capsys):
    assert cli.main(["train", *TINY, f"train.run_dir={tmp_path / 'r'}", "train.steps=2", *overrides]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_bad_paths_are_one_line_and_exit_2(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    (tmp_path / "x.yaml").write_text("a: 1")
    cases = [
        (["train", *TINY, f"train.run_dir={afile}"], "is not a writable folder"),
        (["train", "--config", str(tmp_path / "x.yaml")], "use a .toml or .json file"),
        (["export", str(tmp_path / "none"), str(tmp_path / "out")], "no such run dir"),
    ]
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("[1]")
    cases.append((["train", *TINY, "model.preset=custom", "model.family=bert", f"model.pretrained={hf}"],
                  "expected a JSON object"))
    for argv, message in cases:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_export_onto_a_file_and_an_unfinished_run_are_named(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run, "train.steps=6", "train.stop_after=2") == EXIT_STOPPED
    capsys.readouterr()
    target = tmp_path / "file"
    target.write_text("x")
    assert cli.main(["export", str(run), str(target)]) == 2
    err = capsys.readouterr().err
    assert "is unfinished (checkpoint at step 2 of 6)" in err and "exists and is not a folder" in err
    assert cli.main(["compress", str(run), str(tmp_path / "pruned"), "--prune", "0.5"]) == 0
    assert "is unfinished (checkpoint at step 2 of 6)" in capsys.readouterr().err  # compress says so too


def _truncate_all(step_dir: Path) -> None:
    """Every data file of the step cut short: parameters included, whatever file they landed in."""
    for f in (step_dir / "state").rglob("d/*"):
        os.truncate(f, 100)


def test_inference_uses_the_newest_usable_checkpoint_and_names_the_damaged_one(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run, "train.steps=4") == 0
    mesh = ["mesh.data=2", "mesh.fsdp=2", "mesh.model=2"]
    at_step_4 = run_lib.restore(run, mesh)
    _truncate_all(run / "checkpoints" / "4")
    capsys.readouterr()
    restored = run_lib.restore(run, mesh)
    err = capsys.readouterr().err
    assert at_step_4.step == 4 and restored.step == 2 and not restored.finished
    assert "using checkpoint step 2" in err and "step 4:" in err and "cannot read the parameters" in err
    assert (run / "checkpoints" / "4").is_dir()  # read-only: nothing moved or deleted
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(restored.params),
                                                          jax.tree.leaves(at_step_4.params)))
    _truncate_all(run / "checkpoints" / "2")  # every checkpoint damaged: one error naming each, nothing made up
    with pytest.raises(checkpoint.CheckpointError, match="no usable checkpoint.*step 4:.*step 2:"):
        run_lib.restore(run, mesh)


def _disk_full_run(tmp_path, monkeypatch, fail_at: int, how: str):
    """Trains 4 steps saving every step; the save of step `fail_at` meets a full disk, seen ahead (`free`: the
    space check) or mid-write (`write`: Orbax/TensorStore's error)."""
    real_usage, real_save = shutil.disk_usage, checkpoint.ocp.CheckpointManager.save

    def usage(path):
        return real_usage(path)._replace(free=0 if how == "free" and len(saved()) >= fail_at - 1 else 1 << 40)

    def save(self, step, *a, **k):
        if how == "write" and step == fail_at:
            raise ValueError("RESOURCE_EXHAUSTED: Error writing \"x\" in OCDBT database: Failed to write 656429 "
                             "bytes to file 8: No space left on device [os_error_code='28']")
        return real_save(self, step, *a, **k)

    folder = tmp_path / "run" / "checkpoints"
    saved = lambda: sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())  # noqa: E731
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", usage)
    monkeypatch.setattr(checkpoint.ocp.CheckpointManager, "save", save)
    cfg = tiny_config("train.steps=4", "checkpoint.every=1", "train.eval_every=0", f"train.run_dir={tmp_path / 'run'}")
    with pytest.raises(CheckpointError) as failed:
        train_lib.train(cfg)
    return str(failed.value), saved()


def test_a_full_disk_is_one_error_and_keeps_every_complete_checkpoint(tmp_path, monkeypatch):
    message, kept = _disk_full_run(tmp_path, monkeypatch, fail_at=3, how="free")
    assert kept == [1, 2] and "MiB free, a checkpoint needs about" in message
    assert "nothing was written (the newest complete checkpoint is step 2)" in message
    message, kept = _disk_full_run(tmp_path / "s", monkeypatch, fail_at=1, how="free")  # refused before step 1
    assert kept == [] and "(the newest complete checkpoint is none yet)" in message
    metrics = tmp_path / "s" / "run" / "metrics.jsonl"
    assert not metrics.exists() or '"train"' not in metrics.read_text()  # no step was trained
    message, kept = _disk_full_run(tmp_path / "w", monkeypatch, fail_at=3, how="write")
    assert kept == [1, 2] and "writing a checkpoint failed (No space left on device)" in message
    assert "the newest complete checkpoint is step 2" in message
    monkeypatch.undo()  # space again: the run resumes from step 2 and finishes
    result = train_lib.train(tiny_config("train.steps=4", "checkpoint.every=1", "train.eval_every=0",
                                     f"train.run_dir={tmp_path / 'w' / 'run'}"))
    assert result.finished and result.summary["step"] == 4


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_metrics_on_a_full_disk_stop_the_run_in_one_line_naming_where_it_resumes(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").symlink_to("/dev/full")  # its writes fail with ENOSPC, as a full disk's do
    args = ["train.steps=4", "train.log_every=3", "checkpoint.every=2", "train.eval_every=0", f"train.run_dir={run}"]
    with pytest.raises(WriteError) as failed:  # the log of step 3, after the save of step 2
        train_lib.train(tiny_config(*args))
    assert str(failed.value) == (f"{run / 'metrics.jsonl'}: cannot write (No space left on device); the newest "
                                 f"complete checkpoint is step 2: free space and run the same command again (it "
                                 f"resumes from there)")
    assert checkpoint.Checkpointer(run / "checkpoints").latest_step() == 2
    (run / "metrics.jsonl").unlink()  # space again
    result = train_lib.train(tiny_config(*args))
    assert result.finished and "resumed from" in capsys.readouterr().out
    assert [r["step"] for r in reporting.read_metrics(run) if r["kind"] == "train"] == [3, 4]


def test_a_damaged_ranking_is_named_ranks_last_and_is_set_aside_not_pruned(tmp_path, capsys):
    """The metrics Orbax keeps beside a ranked checkpoint (checkpoint.best_metric) garbled on disk: Orbax
    alone would refuse to open the folder at all. Inference names the step and ranks it last; training moves
    it to unusable/ (kept: it may be the best) and the final line says where the best went."""
    run = tmp_path / "run"
    ranked = ["checkpoint.best_metric=loss", "checkpoint.best_mode=max", "train.eval_every=2", "train.steps=6"]
    assert _train(run, *ranked) == 0
    best = json.loads((run / "summary.json").read_text())["best"]["step"]
    (run / "checkpoints" / str(best) / "metrics" / "metrics").write_text("{garbage")
    capsys.readouterr()
    restored = run_lib.restore(run)
    err = capsys.readouterr().err
    assert f"the ranking saved with checkpoint step(s) [{best}] is unreadable; they rank last" in err
    assert restored.step != best
    assert _train(run, *ranked, "train.steps=8") == 0
    out = capsys.readouterr().out
    assert f"warning: checkpoint step {best}: its ranking (metrics) is unreadable; moved to" in out
    assert [p.name.split("-")[0] for p in (run / "checkpoints" / "unusable").iterdir()] == [str(best)]
