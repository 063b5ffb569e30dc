"""The compression report: the float32 folder reproduces the run's own dev metric exactly, and the table's
sizes and counts are the variants' real ones."""

import json

import pytest

from conftest import tiny_config
from experiments import compress_report
from jaxbatch import train


def test_report_table(tmp_path):
    run_dir = tmp_path / "run"
    result = train.train(tiny_config("model.hidden_size=128", "model.intermediate_size=512", "train.steps=20",
                                     "train.eval_every=0", "data.num_train=256", "data.num_eval=64",
                                     f"train.run_dir={run_dir}"))
    summary = compress_report.main(["--run", str(run_dir), "--rounds", "1", "--batch", "16", "--only",
                                    "int8 dynamic,2:4 one-shot", "--pruned", f"again={run_dir}"])
    rows = {r["variant"]: r for r in summary["rows"]}
    assert list(rows) == ["float32", "int8 dynamic", "2:4 one-shot", "again", "again + int8 dynamic"]
    dense = rows["float32"]
    assert dense["metric"] == result.summary["final_eval"]["entity_f1"] and dense["delta_points"] == 0
    assert rows["again"]["bytes"] == dense["bytes"] and rows["again"]["metric"] == dense["metric"]
    assert rows["int8 dynamic"]["bytes_ratio"] <= 0.27
    layers = result.run.spec.model.num_layers  # the pruned kernels: each layer's q, k, v, out, wi, wo
    kernels = layers * (4 * 128 * 128 + 2 * 128 * 512)
    assert dense["nonzero"] - rows["2:4 one-shot"]["nonzero"] == kernels // 2
    assert all(r["latency_ms"] > 0 for r in rows.values())
    out = run_dir / "compress_report"
    assert json.loads((out / "report.json").read_text())["rows"] == summary["rows"]
    assert (out / "report.md").read_text().count("\n") == 2 + len(rows) and (out / "report.png").stat().st_size > 0


@pytest.mark.parametrize("flags, message", [(["--rounds", "0"], "--rounds and --batch must be >= 1, got 0 and 32"),
                                            (["--only", "int8"], "--only 'int8': int8 is no built-in variant"),
                                            (["--pruned", "runs/x"], "--pruned 'runs/x': use NAME=RUN_DIR")])
def test_bad_flags_are_one_line_and_exit_2(flags, message, tmp_path, capsys):
    """An unknown --only name was passed over (a report without the variant asked for), --rounds 0 timed nothing."""
    with pytest.raises(SystemExit) as stopped:
        compress_report.main(["--run", str(tmp_path), "--out", str(tmp_path / "out"), *flags])
    assert stopped.value.code == 2 and message in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()
