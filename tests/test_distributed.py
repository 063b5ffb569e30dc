"""Two JAX processes (4 CPU devices each, gloo) train exactly like one process with 8 devices."""

import json
import os
import socket
import subprocess
import sys

import pytest

ARGS = ["model.preset=tiny", "model.hidden_dropout=0", "data.seq_len=16", "data.num_train=256", "data.num_eval=64",
        "train.batch_size=32", "train.steps=6", "train.log_every=2", "train.eval_every=6", "train.progress=false",
        "mesh.data=4", "mesh.fsdp=2"]


def _env(devices: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_NUM_CPU_DEVICES", "XLA_FLAGS")}
    env["JAX_NUM_CPU_DEVICES"] = str(devices)
    return env


def _losses(run_dir) -> list[float]:
    return [r["loss"] for r in map(json.loads, open(run_dir / "metrics.jsonl")) if r["kind"] == "train"]


def test_two_processes_match_one(tmp_path):
    one = tmp_path / "one"
    subprocess.run([sys.executable, "-m", "jaxbatch", "train", *ARGS, f"train.run_dir={one}"], env=_env(8),
                   check=True, capture_output=True, timeout=600)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    two = tmp_path / "two"
    procs = [subprocess.Popen([sys.executable, "-m", "jaxbatch", "train", *ARGS, f"train.run_dir={two}",
                               f"distributed.coordinator=127.0.0.1:{port}", "distributed.num_processes=2",
                               f"distributed.process_id={i}", "distributed.cpu_devices=4"],
                              env=_env(4), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    assert "process 1 of 2: 4 local / 8 global devices" in outputs[1]
    assert _losses(two) == pytest.approx(_losses(one), rel=1e-5)
    final = [json.load(open(d / "summary.json"))["final_eval"] for d in (one, two)]
    assert final[1]["loss"] == pytest.approx(final[0]["loss"], rel=1e-5)
    assert final[1]["entities"]["micro avg"]["support"] == final[0]["entities"]["micro avg"]["support"]
