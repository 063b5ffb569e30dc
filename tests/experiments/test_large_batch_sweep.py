import json

from experiments import large_batch_sweep


def test_sweep_writes_table_json_and_plot(tmp_path):
    out = tmp_path / "sweep"
    rows = large_batch_sweep.run(["--batches", "16,64", "--epochs", "0.5", "--micro-batch", "32",
                                  "--run-dir", str(out), "data.num_train=512", "data.num_eval=64",
                                  "data.seq_len=16", "mesh.data=8"])
    assert [(r["batch"], r["steps"], r["accumulation"]) for r in rows] == [(16, 16, 1), (64, 4, 2)]
    assert json.loads((out / "sweep.json").read_text())[1]["batch"] == 64
    assert (out / "sweep.md").read_text().count("\n| ") == 3
    assert (out / "sweep.png").stat().st_size > 10_000
    assert all(0 <= r["dev_accuracy"] <= 1 and r["loss_curve"] for r in rows)
