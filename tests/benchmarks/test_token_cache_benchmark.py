"""benchmarks/token_cache.py loads a corpus uncached and from the token cache in fresh processes: the same rows
every time, and the summary is the rounds'."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def test_cached_and_uncached_loads_give_the_same_rows(tmp_path):
    out = tmp_path / "cache.json"
    done = subprocess.run([sys.executable, str(BENCH / "token_cache.py"), "--copies", "2", "--rounds", "1",
                           "--json", str(out)], capture_output=True, text=True, timeout=600)  # generated words
    assert done.returncode == 0, done.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["rows_equal"] is True and res["tokens"] > 0
    assert 2 <= res["disk_bytes_per_token"] < 3  # uint16 ids (and where documents begin), not the rows' 16
    assert len(res["cached_s"]) == len(res["uncached_s"]) == 1  # a round each (a load is a fresh process, ~5 s)
    assert res["speedup_median"] == pytest.approx(res["uncached_s"][0] / res["cached_s"][0])
    assert f"{res['speedup_median']:.1f}x faster" in done.stdout
