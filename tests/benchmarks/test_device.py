"""benchmarks/device.py runs on a CPU (tiny shapes) and prints its one table with consistent numbers; --models picks
rows, and a preset this platform does not run is one line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_device_benchmark_prints_its_table(tmp_path):
    out = tmp_path / "rows.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "device.py"), "--steps", "2", "--warmup", "1",
                             "--models", "llama-tiny,tiny", "--json", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(table) == 3 and table[0].startswith("| model |")
    rows = json.loads(out.read_text())["rows"]
    assert [r["model"] for r in rows] == ["tiny", "llama-tiny"]  # an encoder and a decoder, in the table's order
    for r, line in zip(rows, table[1:]):
        assert 0 < r["mfu"] < 1 and r["jax_tokens_per_s"] > 0
        assert abs(r["ratio"] - r["jax_tokens_per_s"] / r["torch_tokens_per_s"]) < 1e-6 * r["ratio"]
        assert f"{r['jax_tokens_per_s']:,.0f}" in line and f"{r['ratio']:.2f}x" in line


def test_an_unknown_model_is_named(capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import device

    with pytest.raises(SystemExit) as stop:
        device.main(["--models", "tiny,gpt2-9b"])
    assert stop.value.code == 2
    assert "--models: gpt2-9b not among tiny, gpt-tiny, llama-tiny here" in capsys.readouterr().err
