"""The whole loop on the generated corpus: it learns, and it leaves metrics behind."""

import json

import pytest

from conftest import tiny_config
from jaxbatch import cli, train


def test_train_loop_learns_synthetic_ner(tmp_run_dir):
    cfg = tiny_config("train.steps=60", "train.eval_every=30", "train.log_every=10", "train.batch_size=32",
                      "optim.learning_rate=3e-3", "data.seq_len=32", "mesh.data=4", "mesh.fsdp=2",
                      f"train.run_dir={tmp_run_dir}")
    summary = train.train(cfg)
    evals = summary["evals"]
    assert [e["step"] for e in evals] == [30, 60]
    assert evals[-1]["loss"] < 0.5 * evals[0]["loss"] or evals[-1]["entity_f1"] > 0.5
    assert evals[-1]["entity_f1"] > 0.3
    lines = [json.loads(line) for line in open(f"{tmp_run_dir}/metrics.jsonl")]
    train_lines = [r for r in lines if r["kind"] == "train"]
    assert [r["step"] for r in train_lines] == [10, 20, 30, 40, 50, 60]
    assert all(r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1 for r in train_lines[1:])
    assert json.load(open(f"{tmp_run_dir}/summary.json"))["synthetic_data"] is True


def test_cli_reports_config_errors(capsys):
    assert cli.main(["train", "train.batchsize=3"]) == 2
    assert "did you mean train.batch_size" in capsys.readouterr().err
