"""benchmarks/profile_step.py joins the trace to the HLO: every timed instruction gets a phase and a kind."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import profile_step  # noqa: E402


def test_profile_attributes_the_step_to_phases_and_kinds(capsys):
    res = profile_step.main(["--family", "gpt2", "--preset", "gpt-tiny", "--batch", "2", "--seq", "16", "--steps", "1",
                             "model.vocab_size=65", "model.num_layers=2"])
    kinds = {(g["phase"].split(" ")[0], g["kind"]) for g in res["groups"]}
    assert {("forward", "matmul"), ("backward", "matmul")} <= kinds
    # forward: 2 layers x (q, k, v, out, wi, wo, 2 attention dots) + the tied head; the backward has at least as many
    forward_dots = [r for r in res["rows"] if r["phase"] == "forward" and r["kind"] == "matmul"]
    assert len(forward_dots) >= 2 * 6
    # independent thunks may run at once on XLA:CPU's executor threads, so their sum may pass the step's wall
    # time (25.4 vs 21.9 ms once, on a loaded 2-core box), by at most the number of threads that ran them
    assert 0 < res["thunk_ms"] <= res["step_ms"] * max(2, os.cpu_count() or 1)
    assert len({r["name"] for r in res["rows"]}) == len(res["rows"])  # each instruction counted once
    assert abs(sum(g["ms"] for g in res["groups"]) - res["thunk_ms"]) < 1e-6 * res["thunk_ms"] + 1e-9
    assert "| backward | matmul |" in capsys.readouterr().out


def test_hlo_parsing_finds_fusions_and_their_dots():
    text = """HloModule m

%fused_computation.1 (p0: f32[4,8], p1: f32[8,2]) -> f32[4,2] {
  %p0 = f32[4,8]{1,0} parameter(0)
  %p1 = f32[8,2]{1,0} parameter(1)
  ROOT %dot.1 = f32[4,2]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

ENTRY %main (a: f32[4,8], b: f32[8,2]) -> f32[4,2] {
  %a = f32[4,8]{1,0} parameter(0)
  %b = f32[8,2]{1,0} parameter(1)
  %t = f32[8,4]{1,0} transpose(%a), dimensions={1,0}, metadata={op_name="jit(f)/transpose(jvp())/transpose"}
  ROOT %ynn_fusion.1 = f32[4,2]{1,0} fusion(%a, %b), kind=kCustom, calls=%fused_computation.1, metadata={op_name="jit(f)/jvp()/dot_general"}
}
"""
    ins = profile_step.parse_hlo(text)
    assert profile_step.kind(ins["ynn_fusion.1"]) == "matmul" and profile_step.phase(ins["ynn_fusion.1"]["op"]) == "forward"
    assert profile_step.kind(ins["t"]) == "data movement (copy, transpose, slice)"
    assert profile_step.phase(ins["t"]["op"]) == "backward"
