"""The reporter (reporting.py): MFU never above 100% of a measured peak; run files that survive a kill or a
full disk."""

import errno
import json
import os
import time

import jax
import pytest

from jaxbatch import cache, metrics, reporting
from jaxbatch.errors import WriteError


def _mfu(tmp_path, peak_measured: bool, dtype: str = "float32") -> tuple[float, float]:
    peak = metrics.Peak(1e6, "test", peak_measured, dtype)
    reporter = reporting.Reporter(tmp_path / str(peak_measured), 10, peak, num_devices=jax.device_count(),
                                  progress=False)
    reporter.start_clock(0)
    reporter.advance(tokens=100, flops=1e12)  # far above 1 MFLOP/s per device, whatever the step time
    record = reporter.log(1, {"loss": 1.0})
    reporter.close()
    return record["mfu"], reporter.peak


def test_a_step_faster_than_the_measured_peak_raises_it_for_this_run_and_the_next(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXBATCH_CACHE", str(tmp_path / "cache"))
    mfu, peak = _mfu(tmp_path, peak_measured=True)
    assert mfu == pytest.approx(1.0) and peak > 1e6 * jax.device_count()
    stored = json.loads((tmp_path / "cache" / "peak_flops.json").read_text())
    per_device = peak / jax.device_count()
    assert list(stored.values()) == [pytest.approx(per_device * jax.local_device_count())]  # metrics' units
    assert cache.cached_peak(lambda: 0.0)[0] == pytest.approx(per_device * jax.local_device_count())


def test_a_bf16_step_raises_the_bf16_peak_and_leaves_fp32_alone(tmp_path, monkeypatch):
    """bf16 dots run ~3x fp32's rate on a CPU: a bf16 run measures against its own peak and never raises
    the one fp32 runs read."""
    monkeypatch.setenv("JAXBATCH_CACHE", str(tmp_path / "cache"))
    assert cache.cached_peak(lambda: 2e6, "float32") == (2e6, True)
    _, peak = _mfu(tmp_path, peak_measured=True, dtype="bfloat16")
    assert cache.cached_peak(lambda: 0.0, "float32") == (2e6, False)
    assert cache.cached_peak(lambda: 0.0, "bfloat16")[0] == pytest.approx(
        peak / jax.device_count() * jax.local_device_count())


def test_a_peak_from_the_config_or_a_spec_sheet_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXBATCH_CACHE", str(tmp_path / "cache"))
    mfu, peak = _mfu(tmp_path, peak_measured=False)
    assert mfu > 1.0 and peak == 1e6 * jax.device_count()  # a wrong FLOP count shows, never hidden
    assert not (tmp_path / "cache" / "peak_flops.json").exists()


def test_a_resume_drops_rows_past_its_checkpoint_and_a_torn_last_line(tmp_path):
    """A killed process can leave half a row at the end of metrics.jsonl; a resume keeps every whole row up
    to its checkpoint's step, and the report and curves read the file."""
    rows = [{"step": s, "kind": "train", "loss": 1.0 / s, "learning_rate": 0.1} for s in (1, 2, 3, 4)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 5, "ki')
    assert reporting.read_metrics(tmp_path) == rows
    reporter = reporting.Reporter(tmp_path, 10, metrics.Peak(1e6, "test", False), num_devices=1, progress=False,
                                  initial_step=2)
    reporter.close()
    assert reporting.read_metrics(tmp_path) == rows[:2]
    assert reporting.plot_curves(tmp_path).is_file()


def test_json_files_are_replaced_whole(tmp_path):
    reporting.write_json(tmp_path / "summary.json", {"a": 1})
    reporting.write_json(tmp_path / "summary.json", {"a": 2})
    assert json.loads((tmp_path / "summary.json").read_text()) == {"a": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


FULL = "/dev/full"  # every write to it fails with ENOSPC, as a full disk's do


@pytest.mark.skipif(not os.path.exists(FULL), reason="needs /dev/full")
def test_a_full_disk_keeps_the_json_a_file_held(tmp_path):
    reporting.write_json(tmp_path / "summary.json", {"a": 1})
    (tmp_path / "summary.json.partial").symlink_to(FULL)
    with pytest.raises(WriteError, match=r"summary.json: cannot write \(No space left on device\)"):
        reporting.write_json(tmp_path / "summary.json", {"a": 2})
    assert json.loads((tmp_path / "summary.json").read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_tensorboard_on_a_full_disk_stops_the_next_log_in_one_error(tmp_path, monkeypatch):
    """tensorboardX's own SummaryWriter thread would die on ENOSPC and then block every later write and the
    exit on its bounded queue; ours records the error, the next log raises it, and close neither hangs nor
    raises it twice."""
    from tensorboardX import record_writer

    writes = []

    def write(self, data):
        writes.append(data)
        if len(writes) > 3:  # the file's header and the first log's two scalars land
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(record_writer.RecordWriter, "write", write)
    reporter = reporting.Reporter(tmp_path, 10, metrics.Peak(1e6, "test", False), num_devices=1, progress=False)
    reporter.log(1, {"loss": 1.0, "learning_rate": 0.1})
    deadline = time.monotonic() + 60
    with pytest.raises(WriteError, match=r"tensorboard: cannot write \(No space left on device\)"):
        for step in range(2, 10**6):  # the writer thread meets the full disk a moment after a log
            reporter.log(step, {"loss": 1.0, "learning_rate": 0.1})
            assert time.monotonic() < deadline
            time.sleep(0.01)
    reporter.close()
    assert [r["step"] for r in reporting.read_metrics(tmp_path)][:2] == [1, 2]


def test_train_profile_traces_the_steps_after_the_compiling_one(tmp_path, capsys):
    """train.profile=2: a Perfetto/TensorBoard trace of steps 2-3 in <run_dir>/profile, holding the train
    step's executions of exactly those two steps; a trace the run outlives is still closed and written."""
    import collections
    import gzip

    from conftest import tiny_config
    from jaxbatch import train

    train.train(tiny_config("train.steps=3", "train.eval_every=0", "train.profile=2", f"train.run_dir={tmp_path}"))
    assert f"profile of steps 2-3 written to {tmp_path / 'profile'}" in capsys.readouterr().out
    (trace,) = (tmp_path / "profile").glob("plugins/profile/*/perfetto_trace.json.gz")
    events = json.load(gzip.open(trace))
    events = events["traceEvents"] if isinstance(events, dict) else events
    names = collections.Counter(e["name"] for e in events if e.get("ph") == "X")
    calls = names["PjitFunction(jit(train_step))"]
    assert calls % 2 == 0 and 2 <= calls <= 2 * jax.local_device_count()  # two steps, per device program
    outlived = reporting.StepTrace(tmp_path / "outlived", first_step=0, steps=10)
    outlived.before(1)
    jax.numpy.ones(3).block_until_ready()
    assert outlived.after(2, None) is None  # not at its end yet
    outlived.close()  # the loop ended first (a stop): the trace is still written
    assert list((tmp_path / "outlived").glob("plugins/profile/*/perfetto_trace.json.gz"))
