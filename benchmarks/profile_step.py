"""Where the train step's time goes: a `jax.profiler` trace of a few steps, each XLA thunk's time joined to
its HLO instruction (shape, fusion kind and the JAX op that produced it), grouped by phase (forward,
backward, the rest: optimizer, clipping, RNG, metrics) and by kind (matmul, elementwise fusion, reduction,
data movement, scatter/gather, ...), against the matmul FLOP floor at the measured peak.

    python benchmarks/profile_step.py                          # MiniLM-L6, token classification, 32 x 128, fp32
    python benchmarks/profile_step.py --family gpt2 --preset gpt-tiny --batch 12 --seq 64 model.vocab_size=65
    python benchmarks/profile_step.py --top 30 --hlo step.hlo  # more rows; keep the compiled HLO text

No xprof or TensorBoard plugin is needed: the trace is read from the Perfetto JSON that jax.profiler writes.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import sys
import tempfile
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))

from step_throughput import DEFAULT_PRESET, bench_batch, bench_config  # noqa: E402

from jaxbatch import distributed, metrics, models  # noqa: E402
from jaxbatch import run as run_lib  # noqa: E402

INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+?)(?:\{[^}]*\})? ([\w\-]+)\((.*)$")
MOVES = {"copy", "transpose", "bitcast", "reshape", "broadcast", "concatenate", "slice", "dynamic-slice",
         "dynamic-update-slice", "pad", "copy-start", "copy-done", "tuple", "get-tuple-element", "iota"}


def parse_hlo(text: str) -> dict[str, dict]:
    """name -> {opcode, shape, op (the JAX op_name), dot (the fusion computes a dot), body opcodes}."""
    bodies: dict[str, list[str]] = {}
    current = None
    instructions = {}
    for line in text.splitlines():
        if line and not line.startswith(" ") and "{" in line and "(" in line:  # a computation header
            current = line.split()[0].lstrip("%") if not line.startswith("ENTRY") else "ENTRY"
            bodies[current] = []
            continue
        m = INSTRUCTION.match(line)
        if not m:
            continue
        name, shape, opcode, rest = m.groups()
        if current is not None:
            bodies[current].append(opcode)
        op = re.search(r'op_name="([^"]*)"', rest)
        calls = re.search(r"calls=%?([\w.\-]+)", rest)
        instructions[name] = {"opcode": opcode, "shape": shape, "op": op[1] if op else "",
                              "calls": calls[1] if calls else None}
    for ins in instructions.values():
        body = bodies.get(ins["calls"], []) if ins["calls"] else []
        ins["body"] = body
        ins["dot"] = ins["opcode"] in ("dot", "convolution") or any(o in ("dot", "convolution") for o in body)
    return instructions


def phase(op_name: str) -> str:
    if "transpose(jvp(" in op_name or "transpose(" in op_name:
        return "backward"
    if "jvp(" in op_name:
        return "forward"
    return "rest (optimizer, clipping, RNG, metrics)"


def kind(ins: dict) -> str:
    if ins["dot"]:
        return "matmul"
    ops = set(ins["body"]) or {ins["opcode"]}
    if ops & {"scatter", "gather"}:
        return "scatter / gather"
    if ops & {"reduce", "reduce-window"}:
        return "reduction (+ fused elementwise)"
    if ops <= MOVES:
        return "data movement (copy, transpose, slice)"
    if ins["opcode"] in ("rng-bit-generator", "custom-call") or "threefry" in ins["op"] or "random" in ins["op"]:
        return "random bits"
    return "elementwise fusion"


def read_trace(folder: str) -> dict[str, float]:
    """Total microseconds per event name in the newest Perfetto trace under `folder`."""
    path = sorted(glob.glob(f"{folder}/plugins/profile/*/perfetto_trace.json.gz"))[-1]
    trace = json.load(gzip.open(path))
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    total: dict[str, float] = collections.defaultdict(float)
    for e in events:
        if e.get("ph") == "X":
            total[e["name"]] += e.get("dur", 0.0)
    return total


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=["bert", "gpt2", "llama"], default="bert")
    p.add_argument("--preset", default=None)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--mlm", action="store_true", help="bert: a masked LM instead of token tags")
    p.add_argument("--steps", type=int, default=3, help="traced steps (after 2 untraced)")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--hlo", help="write the compiled HLO text here")
    p.add_argument("--json", help="write the breakdown here")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    preset = args.preset or DEFAULT_PRESET[args.family]
    cfg = bench_config(args.family, preset, args.batch, args.seq,
                       overrides=["mesh.data=1", "train.progress=false", *args.overrides], mlm=args.mlm)
    distributed.initialize(cfg)  # one malloc arena where the step needs it, as `jaxbatch train` takes it
    run = run_lib.setup(cfg, devices=jax.devices()[:1])
    raw = bench_batch(cfg, args.family, args.batch, args.seq)
    batch = {k: jax.device_put(v, run.batch_sh[k]) for k, v in raw.items()}
    state = run.state
    for _ in range(2):
        state, m = run.steps.train(state, batch)
        jax.block_until_ready(m["loss"])
    folder = tempfile.mkdtemp(prefix="profile-")
    with jax.profiler.trace(folder, create_perfetto_trace=True):
        for _ in range(args.steps):
            state, m = run.steps.train(state, batch)
            jax.block_until_ready(m["loss"])
    text = run.steps.lower_train(state, batch).compile().as_text()
    if args.hlo:
        Path(args.hlo).write_text(text)
    instructions, times = parse_hlo(text), read_trace(folder)
    step_us = max(v for k, v in times.items() if k.startswith("ThunkExecutor::Execute")) / args.steps
    rows = []
    for name, us in times.items():
        ins = instructions.get(name)
        if ins is None or ins["opcode"] in ("while", "call", "conditional"):
            continue  # runtime events, or containers whose bodies are timed themselves
        rows.append({"name": name, "ms": us / args.steps / 1e3, "phase": phase(ins["op"]), "kind": kind(ins),
                     "shape": ins["shape"], "op": ins["op"].split("/", 1)[-1]})
    peak = metrics.measure_matmul_flops()
    tokens = args.batch * args.seq
    flops = models.train_flops_per_token(cfg.model, args.seq) * tokens
    groups: dict[tuple[str, str], float] = collections.defaultdict(float)
    for r in rows:
        groups[r["phase"], r["kind"]] += r["ms"]
    op_ms = sum(r["ms"] for r in rows)
    print(f"{preset}, batch {args.batch} x {args.seq}, {cfg.precision.policy}: step {step_us / 1e3:.0f} ms "
          f"(thunks {op_ms:.0f} ms); model matmul FLOPs {flops / 1e9:.1f} G -> floor {flops / peak * 1e3:.0f} ms at the "
          f"measured peak {peak / 1e12:.3f} TFLOP/s ({flops / (step_us / 1e6) / peak:.0%} of it)")
    print("\n| phase | kind | ms / step | share |\n|---|---|---:|---:|")
    for (ph, kd), ms in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"| {ph} | {kd} | {ms:.1f} | {ms / op_ms:.1%} |")
    print(f"\ntop {args.top} instructions:\n| instruction | phase | kind | shape | ms | JAX op |\n|---|---|---|---|---:|---|")
    for r in sorted(rows, key=lambda r: -r["ms"])[: args.top]:
        print(f"| {r['name']} | {r['phase'].split(' ')[0]} | {r['kind']} | {r['shape']} | {r['ms']:.1f} | {r['op'][:60]} |")
    res = {"step_ms": step_us / 1e3, "thunk_ms": op_ms, "floor_ms": flops / peak * 1e3, "peak_flops": peak,
           "groups": [{"phase": ph, "kind": kd, "ms": ms} for (ph, kd), ms in groups.items()], "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
