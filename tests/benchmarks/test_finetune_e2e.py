"""benchmarks/finetune_e2e.py runs both loops on the same examples, once per seed, and reports consistent numbers."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import finetune_e2e  # noqa: E402


@pytest.mark.parametrize("task, seeds, extra", [("ner", [0, 1], []), ("qa", [0], ["data.doc_stride=8"])])
def test_both_loops_train_per_seed_and_the_summary_is_theirs(task, seeds, extra, tmp_path):
    # a process of its own, as users run it: the recipe's one CPU device, not the suite's eight (3x slower)
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_NUM_CPU_DEVICES", "XLA_FLAGS")}
    env["TMPDIR"] = str(tmp_path)  # the per-seed run dirs
    out = tmp_path / "e2e.json"
    done = subprocess.run([sys.executable, str(BENCH / "finetune_e2e.py"), "--task", task, "--data", "synthetic",
                           "--steps", "3", "--seeds", ",".join(map(str, seeds)), "--json", str(out), "data.seq_len=32",
                           "data.num_train=96", "data.num_eval=48", "train.batch_size=8", "optim.warmup_steps=1",
                           "data.buckets=1", "distributed.cpu_one_arena=false", *extra], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    res = json.loads(out.read_text())
    assert [r["seed"] for r in res["runs"]] == seeds and res["task"] == task
    assert len(list(tmp_path.glob("e2e-*/checkpoints"))) == len(seeds)  # each seed from scratch in its own dir
    for r in res["runs"]:
        jx, pt = r["jaxbatch"], r["torch"]
        assert jx["steps"] == pt["steps"] == 3
        assert 0 < jx["train_s"] < jx["total_s"] and pt["train_s"] > 0
        assert r["time_ratio"] == pytest.approx(jx["train_s"] / pt["train_s"])
        assert all(0 <= x["dev_f1"] <= 1 for x in (jx, pt))
    assert res["time_ratio"] == pytest.approx(np.median([r["time_ratio"] for r in res["runs"]]))
    assert f"{res['time_ratio']:.2f}x" in done.stdout


def test_summary_is_mean_sd_and_the_unpaired_standard_error():
    runs = [{"jaxbatch": {"train_s": t, "dev_f1": f}, "torch": {"train_s": 2.0, "dev_f1": g},
             "time_ratio": t / 2.0} for t, f, g in ((1.0, 0.90, 0.91), (3.0, 0.92, 0.91), (2.0, 0.94, 0.91))]
    s = finetune_e2e.summary(runs)
    assert s["time_ratio"] == 1.0 and s["jaxbatch"]["train_s_median"] == 2.0
    assert s["jaxbatch"]["f1_mean"] == pytest.approx(0.92) and s["jaxbatch"]["f1_std"] == pytest.approx(0.02)
    assert s["torch"]["f1_std"] == pytest.approx(0.0, abs=1e-12)
    assert s["f1_delta_points"] == pytest.approx(1.0)
    assert s["f1_delta_se_points"] == pytest.approx(2.0 / np.sqrt(3))
