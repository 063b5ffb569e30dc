"""The `jaxbatch` command: train, plan and advise-batch end to end on the tiny model."""

import json

from jaxbatch import cli

TINY = ["model.preset=tiny", "data.seq_len=16", "train.progress=false", "mesh.data=8"]


def test_train_with_accumulation_then_advise(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", *TINY, "train.batch_size=32", "train.accum_steps=2", "train.steps=12",
                     "train.log_every=2", "train.eval_every=12", f"train.run_dir={run}"]) == 0
    estimates = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert sum(r["kind"] == "noise_scale" for r in estimates) >= 3
    summary = json.load(open(run / "summary.json"))
    assert summary["noise_scale"] is not None and summary["steps"] == 12
    capsys.readouterr()
    assert cli.main(["advise-batch", str(run)]) == 0
    assert "gradient noise scale" in capsys.readouterr().out
    assert cli.main(["advise-batch", str(tmp_path / "none")]) == 2


def test_plan_prints_the_chosen_accumulation(capsys):
    assert cli.main(["plan", *TINY, "train.batch_size=64", "train.memory_budget_gb=0.004"]) == 0
    out = capsys.readouterr().out
    assert "plan: train.accum_steps=" in out and "too big" in out
    assert cli.main(["plan", *TINY, "train.batch_size=16", "train.memory_budget_gb=0.00001"]) == 2
