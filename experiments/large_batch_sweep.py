"""Large-batch sweep: the same task trained for a fixed number of epochs at several global batch sizes, with
the LR and warmup scaled from a reference batch. Writes a table (sweep.md, sweep.json) and a plot (sweep.png:
dev metric vs batch, and loss vs examples seen).

    python -m experiments.large_batch_sweep --task sst2 --batches 32,256,1024,4096 [--data-dir DIR] \
        [--optimizer lamb] [--scale-rule sqrt] [--reference-batch 32] [--micro-batch 256] [key=value ...]

Without --data-dir it runs offline on the generated corpus with the tiny model (minutes on a CPU); with it,
on the real dataset with pretrained MiniLM-L6.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from jaxbatch import config, train


def run(argv: list[str]) -> list[dict]:
    p = argparse.ArgumentParser(prog="python -m experiments.large_batch_sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=["sst2", "conll"], default="sst2")
    p.add_argument("--batches", default="32,256,1024,4096")
    p.add_argument("--data-dir", default="")
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--optimizer", default="lamb")
    p.add_argument("--scale-rule", default="sqrt")
    p.add_argument("--reference-batch", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=None)
    p.add_argument("--micro-batch", type=int, default=256, help="accumulate above this many sequences per step")
    p.add_argument("--run-dir", default="runs/large_batch_sweep")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    if args.data_dir:
        name = {"sst2": "sst2", "conll": "conll2003"}[args.task]
        base = ["model.preset=minilm-l6", "model.pretrained=minilm-l6", f"data.name={name}",
                f"data.data_dir={args.data_dir}", "data.seq_len=64", "data.buckets=3"]
        lr = args.learning_rate or 5e-5
    else:
        name = {"sst2": "synthetic_sst", "conll": "synthetic_ner"}[args.task]
        base = ["model.preset=tiny", f"data.name={name}", "data.seq_len=32", "data.num_train=16384"]
        lr = args.learning_rate or 1e-3
    rows = []
    for batch in batches:
        cfg = config.build(base + [f"optim.name={args.optimizer}", f"optim.scale_rule={args.scale_rule}",
                                   f"optim.reference_batch={args.reference_batch}", f"optim.learning_rate={lr}",
                                   "optim.warmup_steps=40", f"train.batch_size={batch}", "train.progress=false",
                                   f"train.accum_steps={max(1, batch // args.micro_batch)}",
                                   f"train.run_dir={args.run_dir}/batch{batch}", *args.overrides])
        n_train = cfg.data.max_train or cfg.data.num_train
        if args.data_dir:
            from jaxbatch import run as run_lib
            from jaxbatch.data import tasks

            n_train = len(tasks.load(cfg.data, run_lib.tokenizer(cfg)).train["labels"])
        steps = max(1, math.ceil(args.epochs * n_train / batch))
        cfg = config.replace(cfg, train__steps=steps, train__eval_every=steps, train__log_every=max(1, steps // 20))
        summary = train.train(cfg).summary
        final = summary["final_eval"]
        curve = [(r["step"] * batch, r["loss"]) for r in _history(cfg.train.run_dir)]
        rows.append({"batch": batch, "steps": cfg.train.steps, "wall_time_s": summary["wall_time_s"],
                     "accumulation": cfg.train.accum_steps, "dev_accuracy": final["accuracy"],
                     "dev_entity_f1": final.get("entity_f1"), "dev_loss": final["loss"],
                     "noise_scale": summary["noise_scale"], "loss_curve": curve})
    _write(rows, Path(args.run_dir), args)
    return rows


def _history(run_dir: str) -> list[dict]:
    return [r for r in map(json.loads, open(Path(run_dir) / "metrics.jsonl")) if r["kind"] == "train"]


def _write(rows: list[dict], out: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = "dev_entity_f1" if args.task == "conll" else "dev_accuracy"
    lines = [f"| batch | steps | accumulation | wall time (s) | {metric} | dev loss | noise scale |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        ns = f"{r['noise_scale']:.0f}" if r["noise_scale"] else "—"
        lines.append(f"| {r['batch']} | {r['steps']} | {r['accumulation']} | {r['wall_time_s']:.1f} | "
                     f"{r[metric]:.4f} | {r['dev_loss']:.4f} | {ns} |")
    table = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.md").write_text(f"optimizer {args.optimizer}, scale rule {args.scale_rule} from batch "
                                  f"{args.reference_batch}, {args.epochs} epochs\n\n{table}\n")
    (out / "sweep.json").write_text(json.dumps(rows, indent=2))
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot([r["batch"] for r in rows], [r[metric] for r in rows], "o-")
    a.set(xscale="log", xlabel="global batch (sequences)", ylabel=metric, title="dev metric after a fixed budget")
    for r in rows:
        b.plot(*zip(*r["loss_curve"]), label=f"batch {r['batch']}")
    b.set(xlabel="examples seen", ylabel="train loss", yscale="log", title="loss curves")
    b.legend()
    fig.tight_layout()
    fig.savefig(out / "sweep.png", dpi=100)
    print(table)
    print(f"written: {out}/sweep.md, sweep.json, sweep.png")


if __name__ == "__main__":
    run(sys.argv[1:])
