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


def test_bad_input_files_are_reported_without_traceback(tmp_path, capsys):
    (tmp_path / "train.txt").write_text("John B-PER\nlives O extra\n")
    (tmp_path / "valid.txt").write_text("x O\n")
    args = ["train", "model.preset=minilm-l6", "model.pretrained=minilm-l6", "data.name=conll2003",
            f"data.data_dir={tmp_path}", f"data.cache_dir={tmp_path / 'cache'}", "train.progress=false"]
    assert cli.main(args) == 2
    assert "DataError" in (err := capsys.readouterr().err) and "train.txt:2: expected 4 columns" in err
    assert cli.main(["train", "model.preset=custom", f"model.pretrained={tmp_path / 'nothing'}"]) == 2
    assert "no such folder" in capsys.readouterr().err
