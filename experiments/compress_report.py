"""What compression costs: the dense model and each compressed variant on the dev split.

    python -m experiments.compress_report --run RUN_DIR [--data-dir DIR] [--pruned NAME=RUN_DIR ...]

Each variant is written by the compress pass (jaxbatch/compress/pipeline.py) into OUT/models/NAME and
restored from there, as predict/evaluate would. The table gives parameters, non-zeros, bytes on disk, CPU
latency per eval batch (median over alternating rounds, so drift hits every variant alike), the dev metric
and its change against the float32 model. `--pruned NAME=RUN_DIR` adds runs pruned while fine-tuning
(prune.* keys), stored packed and also int8. Writes OUT/report.md, report.json and report.png (metric vs
bytes on disk); OUT defaults to RUN_DIR/compress_report.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

from jaxbatch import cli, evaluate
from jaxbatch import run as run_lib
from jaxbatch.compress import pipeline, storage
from jaxbatch.data import pipeline as data_pipeline
from jaxbatch.data import tasks

O = pipeline.Options
VARIANTS = {
    "float32": O(),
    "int8 weights": O(quant="int8"),
    "int8 dynamic": O(quant="int8", act="dynamic"),
    "int8 static p99.99": O(quant="int8", act="static", calibration="percentile:99.99"),
    "prune 50% one-shot": O(sparsity=0.5),
    "2:4 one-shot": O(pattern="2:4"),
    "low-rank 90% energy": O(rank_energy=0.9),
}


def metric(result: dict, task: str) -> tuple[str, float]:
    """The headline dev metric (higher is better except the LM's loss)."""
    if task == "token":
        return "entity F1", result["entity_f1"]
    if "pearson" in result:  # a regression head
        return "Pearson r", result["pearson"]
    if task == "qa":
        return "F1 (SQuAD)", result["f1"]
    if task == "sequence":
        return "accuracy", result["accuracy"]
    return "loss", result["loss"]


def latency(restored: dict, batch: dict, rounds: int, calls: int = 3) -> dict[str, float]:
    """Median seconds per eval batch of each model, over `rounds` alternating rounds."""
    times: dict[str, list[float]] = {name: [] for name in restored}
    placed = {name: data_pipeline.to_global(batch, r.run.batch_sh) for name, r in restored.items()}
    for name, r in restored.items():  # compile and warm up
        jax.block_until_ready(r.run.steps.eval(r.params, placed[name]))
    for _ in range(rounds):
        for name, r in restored.items():
            for _ in range(calls):
                start = time.perf_counter()
                jax.block_until_ready(r.run.steps.eval(r.params, placed[name]))
                times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m experiments.compress_report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="the trained (dense) run dir")
    p.add_argument("--data-dir", default="", help="dataset folder (default: the run's data.data_dir)")
    p.add_argument("--pruned", action="append", default=[], help="NAME=RUN_DIR of a run pruned while training")
    p.add_argument("--out", default="", help="output folder (default RUN_DIR/compress_report)")
    p.add_argument("--batch", type=int, default=32, help="eval batch for the latency column")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--only", default="", help="comma-separated built-in variants to run (default all; float32 always)")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.batch < 1:
        p.error(f"--rounds and --batch must be >= 1, got {args.rounds} and {args.batch}")
    keep = set(args.only.split(",")) | {"float32"} if args.only else set(VARIANTS)
    if keep - set(VARIANTS):
        p.error(f"--only {args.only!r}: {', '.join(sorted(keep - set(VARIANTS)))} is no built-in variant (they are: "
                f"{', '.join(VARIANTS)})")
    jobs = [(name, args.run, opts) for name, opts in VARIANTS.items() if name in keep]
    for item in args.pruned:
        name, _, run_dir = item.partition("=")
        if not (name and run_dir):
            p.error(f"--pruned {item!r}: use NAME=RUN_DIR")
        jobs += [(name, run_dir, O()), (f"{name} + int8 dynamic", run_dir, O(quant="int8", act="dynamic"))]
    out = Path(args.out or Path(args.run) / "compress_report")
    (out / "models").mkdir(parents=True, exist_ok=True)

    rows, restored = [], {}
    for name, run_dir, opts in jobs:
        folder = out / "models" / name.replace(" ", "_").replace(":", "-").replace("%", "pct").replace("+", "plus")
        if not storage.is_compressed(folder):
            pipeline.compress_model(run_lib.restore(run_dir), folder,
                                    dataclasses.replace(opts, data_dir=args.data_dir),
                                    log=lambda line, n=name: print(f"[{n}] {line}"))
        restored[name] = r = run_lib.restore(folder, [f"train.batch_size={args.batch}"])
        spec = r.run.spec
        data_cfg = dataclasses.replace(spec.data, data_dir=args.data_dir or spec.data.data_dir, max_train=0)
        arrays, windows = tasks.scored_split(data_cfg, r.tokenizer, "validation", spec.model.problem_type)
        per_byte = tasks.bytes_per_token(r.tokenizer) if spec.model.task == "lm" else None
        result = evaluate.evaluate(r.run, r.params, arrays, run_lib.label_names(spec), spec.model.task,
                                   batch_size=args.batch, bytes_per_token=per_byte, windows=windows)
        metric_name, value = metric(result, spec.model.task)
        report = storage.read_report(folder)
        rows.append({"variant": name, "source": run_dir, "params": report["params_after"],
                     "nonzero": report["nonzero_after"], "bytes": storage.bytes_on_disk(folder),
                     "metric_name": metric_name, "metric": value})
        print(f"{name}: {metric_name} {value:.4f}, {rows[-1]['bytes'] / 2**20:.2f} MiB")
        batch = {k: v[: args.batch] for k, v in arrays.items()}

    seconds = latency(restored, batch, args.rounds)
    for row in rows:
        row["latency_ms"] = 1000 * seconds[row["variant"]]
    base = rows[0]
    for row in rows:
        row["delta_points"] = 100 * (row["metric"] - base["metric"])
        row["bytes_ratio"] = row["bytes"] / base["bytes"]
        row["latency_ratio"] = row["latency_ms"] / base["latency_ms"]
    summary = {"run": args.run, "device": jax.devices()[0].device_kind, "devices": jax.device_count(), "cpu_count": os.cpu_count(),
               "eval_batch": args.batch, "rounds": args.rounds, "rows": rows}
    (out / "report.json").write_text(json.dumps(summary, indent=1))
    (out / "report.md").write_text(markdown(rows))
    plot(rows, out / "report.png")
    print(markdown(rows))
    print(f"report in {out}/report.md, report.json, report.png")
    return summary


def markdown(rows: list[dict]) -> str:
    name = rows[0]["metric_name"]
    lines = [f"| variant | parameters | non-zero | MiB on disk | x float32 | ms / batch | x float32 | {name} | delta (points) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['params']:,} | {r['nonzero']:,} | {r['bytes'] / 2**20:.2f} | "
                     f"{r['bytes_ratio']:.3f} | {r['latency_ms']:.1f} | {r['latency_ratio']:.2f} | {r['metric']:.4f} | "
                     f"{r['delta_points']:+.2f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    markers = "os^vD<>pPX*h"
    for i, r in enumerate(rows):  # a legend, not labels: variants of equal size would overprint each other
        ax.scatter(r["bytes"] / 2**20, r["metric"], marker=markers[i % len(markers)], s=50, alpha=0.8,
                   label=r["variant"])
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_xlabel("MiB on disk")
    ax.set_ylabel(f"dev {rows[0]['metric_name']}")
    ax.set_title("compression: dev metric vs size")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(cli.reported(main))
