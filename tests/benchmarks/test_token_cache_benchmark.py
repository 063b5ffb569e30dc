"""benchmarks/token_cache.py loads a corpus uncached and from the token cache in fresh processes: the same rows
every time, and the summary is the rounds'."""

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def test_cached_and_uncached_loads_give_the_same_rows(tmp_path):
    out = tmp_path / "cache.json"
    done = subprocess.run([sys.executable, str(BENCH / "token_cache.py"), "--copies", "1", "--rounds", "2",
                           "--json", str(out)], capture_output=True, text=True, timeout=600)  # generated words
    assert done.returncode == 0, done.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["rows_equal"] is True and res["tokens"] > 0
    assert len(res["cached_s"]) == len(res["uncached_s"]) == 2
    ratios = [u / c for u, c in zip(res["uncached_s"], res["cached_s"])]
    assert res["speedup_median"] == pytest.approx(statistics.median(ratios))
    assert f"{res['speedup_median']:.1f}x faster" in done.stdout
