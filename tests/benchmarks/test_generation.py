"""benchmarks/generation.py decodes the same prompts with jaxbatch and with HF's `generate` (GPT-2, and LLaMA with
grouped-query attention): greedy tokens agree, and so do beam search's best beams."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.parametrize("arch", [["--arch", "gpt2"], ["--arch", "llama", "--kv-heads", "2"],
                                  ["--arch", "llama", "--kv-heads", "2", "--num-beams", "3"]])
def test_greedy_generation_equals_hf_and_the_summary_is_the_rounds(tmp_path, arch):
    out = tmp_path / "gen.json"
    done = subprocess.run([sys.executable, str(BENCH / "generation.py"), *arch, "--layers", "2", "--hidden", "64",
                           "--heads", "4", "--vocab", "97", "--batch", "3", "--prompt-len", "5", "--new", "24",
                           "--rounds", "2", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["best_beams_equal" if "--num-beams" in arch else "greedy_tokens_equal"] is True
    assert len(res["jaxbatch_s"]) == len(res["hf_s"]) == 2
    ratios = sorted(o / h for o, h in zip(res["jaxbatch_s"], res["hf_s"]))
    assert res["ratio_median"] == pytest.approx((ratios[0] + ratios[1]) / 2)
    assert f"{res['ratio_median']:.2f}x" in done.stdout
