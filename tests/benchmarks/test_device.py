"""benchmarks/device.py runs on a CPU (tiny shapes) and prints its one table with consistent numbers."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_device_benchmark_prints_its_table(tmp_path):
    out = tmp_path / "rows.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "device.py"), "--steps", "2", "--warmup", "1",
                             "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(table) == 4 and table[0].startswith("| model |")
    rows = json.loads(out.read_text())["rows"]
    assert [r["model"] for r in rows] == ["tiny", "gpt-tiny", "llama-tiny"]
    for r, line in zip(rows, table[1:]):
        assert 0 < r["mfu"] < 1 and r["jax_tokens_per_s"] > 0
        assert abs(r["ratio"] - r["jax_tokens_per_s"] / r["torch_tokens_per_s"]) < 1e-6 * r["ratio"]
        assert f"{r['jax_tokens_per_s']:,.0f}" in line and f"{r['ratio']:.2f}x" in line
