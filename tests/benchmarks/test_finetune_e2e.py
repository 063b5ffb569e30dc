"""benchmarks/finetune_e2e.py runs both loops on the same examples and reports consistent numbers."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import finetune_e2e  # noqa: E402


def test_both_loops_train_and_the_ratio_is_theirs(tmp_path, capsys):
    out = tmp_path / "e2e.json"
    res = finetune_e2e.main(["--data", "synthetic", "--steps", "3", "--json", str(out), "data.seq_len=32",
                             "data.num_train=96", "data.num_eval=48", "train.batch_size=8", "optim.warmup_steps=1",
                             "data.buckets=1", "distributed.cpu_one_arena=false", f"train.run_dir={tmp_path / 'run'}"])
    jx, pt = res["jaxbatch"], res["torch"]
    assert jx["steps"] == pt["steps"] == 3
    assert 0 < jx["train_s"] < jx["total_s"] and pt["train_s"] > 0
    assert res["time_ratio"] == pytest.approx(jx["train_s"] / pt["train_s"])
    assert all(0 <= r["dev_entity_f1"] <= 1 for r in (jx, pt))
    assert json.loads(out.read_text())["time_ratio"] == res["time_ratio"]
    assert f"{res['time_ratio']:.2f}x" in capsys.readouterr().out
