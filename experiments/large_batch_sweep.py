"""Large-batch sweep: one task trained on the same number of examples at several global batch sizes, for
several optimizer / LR-scaling variants and seeds. Prints and writes (to --run-dir) the Shallue et al. (2018)
views: dev metric vs batch after a fixed budget, dev metric vs optimizer steps, and the optimizer steps each
batch needs to reach a target (the smallest batch's best dev metric minus --target-drop), next to the
gradient noise scale B_simple measured in the same runs (the batch-size advisor, noise_scale.py).

    python -m experiments.large_batch_sweep --task sst2 --data-dir ../shared/data/sst2 \\
        --batches 32,128,512,2048 --variants adamw:none,adamw:linear,lamb:sqrt --seeds 0,1 --epochs 1

A variant is OPTIMIZER:RULE[:LR] (LR = the learning rate at --reference-batch; default 5e-5 for adamw,
1e-3 for lamb/lars on pretrained MiniLM-L6, 1e-3 / 1e-2 on the tiny offline model). Rule `none` runs
without warmup; `linear` and `sqrt` warm up over --warmup of the examples. Every point is its own run dir
(<run-dir>/<variant>/b<batch>/s<seed>) with checkpoints: an interrupted sweep resumes where it stopped,
finished points are read back instead of rerun, and new batches, variants or seeds extend a sweep;
`--report` trains nothing and tables the finished points among those named. The advisor check fits
McCandlish et al.'s S(B) = S_min + E_min / B to the steps to target and compares B_crit = E_min / S_min with
B_simple. Recorded results: experiments/results/. Without --data-dir it runs offline on the generated corpus with the tiny model (minutes on a CPU).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np

from jaxbatch import cli, config, distributed, noise_scale, rampup, train

DEFAULT_LR = {"pretrained": {"adamw": 5e-5, "lamb": 1e-3, "lars": 1e-3},
              "tiny": {"adamw": 1e-3, "lamb": 1e-2, "lars": 1e-2}}


def steps_to_target(evals: list[tuple[int, float]], target: float) -> int | None:
    """The first evaluated optimizer step whose dev metric reaches `target` (None: never within the run)."""
    for step, value in sorted(evals):
        if value >= target:
            return step
    return None


def parse_variant(text: str, model: str) -> dict:
    parts = text.split(":")
    if len(parts) not in (2, 3) or parts[1] not in ("none", "linear", "sqrt"):
        raise SystemExit(f"--variants: {text!r} is not OPTIMIZER:none|linear|sqrt[:LR]")
    lr = float(parts[2]) if len(parts) == 3 else DEFAULT_LR[model].get(parts[0])
    if lr is None:
        raise SystemExit(f"--variants: no default learning rate for {parts[0]!r}; give one as {text}:LR")
    return {"name": text, "optimizer": parts[0], "rule": parts[1], "learning_rate": lr}


def point_config(args, base: list[str], variant: dict, batch: int, seed: int, steps: int, run_dir: Path):
    """The config of one sweep point. Accumulation keeps micro-batches <= --micro-batch and k >= 2, so every
    run measures the gradient noise scale (the scan is exact: k does not change the result)."""
    accum = max(2, math.ceil(batch / args.micro_batch))
    warm = variant["rule"] != "none"
    overrides = [*base, f"optim.name={variant['optimizer']}", f"optim.scale_rule={variant['rule']}",
                 f"optim.reference_batch={args.reference_batch}", f"optim.learning_rate={variant['learning_rate']}",
                 f"optim.warmup_steps={math.ceil(args.warmup * steps * batch / args.reference_batch) if warm else 0}",
                 f"train.batch_size={batch}", f"train.accum_steps={accum}", f"train.steps={steps}",
                 f"train.seed={seed}", "train.progress=false", f"train.eval_every={max(1, steps // args.evals)}",
                 f"train.log_every={max(1, steps // 50)}", f"checkpoint.every={max(1, steps // 4)}",
                 "checkpoint.max_to_keep=1", f"train.run_dir={run_dir}"]
    if args.rampup_samples and accum > 2:  # from one micro-batch up, one micro-batch at a time
        overrides += [f"train.rampup_samples={args.rampup_samples}", f"train.rampup_start={batch // accum}"]
    return config.build(overrides + args.overrides)


def run_point(cfg: config.Config, metric: str, train_missing: bool = True) -> dict | None:
    """Trains one point (resuming it if interrupted) or reads back its summary when it finished with the
    same config (point.json records the config a finished point ran with). None: not finished and
    `train_missing` is off."""
    run_dir = Path(cfg.train.run_dir)
    marker, summary_file = run_dir / "point.json", run_dir / "summary.json"
    settings = config.to_dict(cfg)
    # keys added to Config since a point ran take their defaults
    same = marker.is_file() and summary_file.is_file() and config.from_dict(json.loads(marker.read_text())) == cfg
    if same:
        done = json.loads(summary_file.read_text())
    elif not train_missing:
        return None
    else:
        done = train.train(cfg).summary
        if not done["finished"]:
            print(f"{run_dir} stopped before its last step; run the sweep again to resume it")
            raise SystemExit(75)
        marker.write_text(json.dumps(settings))
    history = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    evals = [(r["step"], r[metric]) for r in history if r["kind"] == "eval"]
    micro = rampup.micro_batch(cfg.train)
    pairs = [noise_scale.unbiased_estimates(r["grad_sq_small"], r["grad_sq_big"],
                                            rampup.step_micro_batch(r["batch_size"], micro), r["batch_size"])
             for r in history if r["kind"] == "train" and "grad_sq_small" in r]
    g2, trace = (statistics.fmean(x) for x in zip(*pairs)) if pairs else (0.0, 0.0)
    return {"steps": done["steps"], "samples": done["samples"], "wall_time_s": done["wall_time_s"],
            "accumulation": cfg.train.accum_steps, "learning_rate": done["effective_hparams"]["learning_rate"],
            "evals": evals, "best": max(v for _, v in evals), "final": evals[-1][1],
            "noise_scale": done["noise_scale"],  # the run's final moving average
            "noise_scale_run": trace / g2 if g2 > 0 else None,  # over the whole run: mean tr(S) / mean |G|^2
            "loss_curve": [(r["step"], r["loss"]) for r in history if r["kind"] == "train"]}


def run(argv: list[str]) -> dict:
    p = argparse.ArgumentParser(prog="python -m experiments.large_batch_sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=["sst2", "conll"], default="sst2")
    p.add_argument("--batches", default="32,128,512,2048")
    p.add_argument("--variants", default="adamw:none,adamw:linear,lamb:sqrt")
    p.add_argument("--seeds", default="0")
    p.add_argument("--data-dir", default="")
    p.add_argument("--epochs", type=float, default=1.0, help="training examples per point, in epochs")
    p.add_argument("--max-train", type=int, default=0, help="use only the first N training examples (0 = all)")
    p.add_argument("--reference-batch", type=int, default=32)
    p.add_argument("--warmup", type=float, default=0.06, help="warmup, as a fraction of the examples")
    p.add_argument("--micro-batch", type=int, default=256, help="accumulate above this many sequences per step")
    p.add_argument("--evals", type=int, default=12, help="dev evaluations per point (steps-to-target resolution)")
    p.add_argument("--target-drop", type=float, default=0.005)
    p.add_argument("--rampup-samples", type=int, default=0,
                   help="batches of more than 2 micro-batches ramp up from one micro-batch over this many examples")
    p.add_argument("--report", action="store_true", help="train nothing: report the finished points among those named")
    p.add_argument("--run-dir", default="runs/large_batch_sweep")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)

    def whole_numbers(flag: str, text: str, least: int) -> list[int]:
        try:
            values = [int(x) for x in text.split(",")]
        except ValueError:
            values = []
        if not values or min(values) < least:
            p.error(f"{flag} {text!r}: give comma-separated whole numbers >= {least}")
        return values

    batches = sorted(whole_numbers("--batches", args.batches, 1))
    seeds = whole_numbers("--seeds", args.seeds, 0)
    for flag, value in (("--epochs", args.epochs), ("--micro-batch", args.micro_batch), ("--evals", args.evals),
                        ("--reference-batch", args.reference_batch)):
        if not value > 0:
            p.error(f"{flag} must be > 0, got {value}")
    model = "pretrained" if args.data_dir else "tiny"
    variants = [parse_variant(v, model) for v in args.variants.split(",")]
    if args.data_dir:
        name = {"sst2": "sst2", "conll": "conll2003"}[args.task]
        base = ["model.preset=minilm-l6", "model.pretrained=minilm-l6", f"data.name={name}",
                f"data.data_dir={args.data_dir}", "data.seq_len=64", "data.buckets=3",
                f"data.max_train={args.max_train}"]
    else:
        name = {"sst2": "synthetic_sst", "conll": "synthetic_ner"}[args.task]
        base = ["model.preset=tiny", f"data.name={name}", "data.seq_len=32", "data.num_train=16384"]
    metric = "entity_f1" if args.task == "conll" else "accuracy"
    sweep_cfg = config.build(base + args.overrides)
    distributed.initialize(sweep_cfg)  # the overrides' distributed.* hold for every point
    n_train = _train_examples(sweep_cfg)
    points = []
    for variant in variants:
        for batch in batches:
            steps = max(1, math.ceil(args.epochs * n_train / batch))
            for seed in seeds:
                run_dir = Path(args.run_dir) / variant["name"].replace(":", "_") / f"b{batch}" / f"s{seed}"
                cfg = point_config(args, base, variant, batch, seed, steps, run_dir)
                point = run_point(cfg, metric, train_missing=not args.report)
                if point is not None:
                    points.append({"variant": variant["name"], "batch": batch, "seed": seed, **point})
    report = summarize(points, batches, variants, metric, args)
    _write(report, Path(args.run_dir), metric)
    return report


def _train_examples(cfg: config.Config) -> int:
    from jaxbatch import run as run_lib
    from jaxbatch.data import tasks

    if not cfg.data.data_dir:
        return cfg.data.num_train
    return len(tasks.load(cfg.data, run_lib.tokenizer(cfg)).train["labels"])


def summarize(points: list[dict], batches: list[int], variants: list[dict], metric: str, args) -> dict:
    """Seed medians per (variant, batch); the target and each point's steps to it; the advisor's check."""
    base = [p["best"] for p in points if p["batch"] == batches[0] and p["variant"] == variants[0]["name"]]
    if not base:
        raise SystemExit(f"no finished baseline point ({variants[0]['name']}, batch {batches[0]}) to set the target")
    target = statistics.median(base) - args.target_drop
    rows = []
    for v in variants:
        for b in batches:
            ps = [p for p in points if p["variant"] == v["name"] and p["batch"] == b]
            if not ps:
                continue
            reach = [steps_to_target(p["evals"], target) for p in ps]
            hit = [s for s in reach if s is not None]
            smallest = [p["best"] for p in points if p["variant"] == v["name"] and p["batch"] == min(
                q["batch"] for q in points if q["variant"] == v["name"])]
            own_target = statistics.median(smallest) - args.target_drop  # the variant's own smallest-batch best
            own = [s for s in (steps_to_target(p["evals"], own_target) for p in ps) if s is not None]
            noise = [p["noise_scale"] for p in ps if p["noise_scale"]]
            noise_run = [p["noise_scale_run"] for p in ps if p.get("noise_scale_run")]
            rows.append({
                "variant": v["name"], "batch": b, "seeds": len(ps), "steps": ps[0]["steps"],
                "samples": ps[0]["samples"], "learning_rate": ps[0]["learning_rate"],
                "wall_time_s": statistics.median(p["wall_time_s"] for p in ps),
                "best": statistics.median(p["best"] for p in ps), "best_range": [min(p["best"] for p in ps),
                                                                                  max(p["best"] for p in ps)],
                "final": statistics.median(p["final"] for p in ps),
                "reached": f"{len(hit)}/{len(ps)}",
                "steps_to_target": statistics.median(hit) if len(hit) * 2 > len(ps) else None,
                "own_target": own_target,
                "steps_to_own_target": statistics.median(own) if len(own) * 2 > len(ps) else None,
                "noise_scale": statistics.median(noise) if noise else None,
                "noise_scale_run": statistics.median(noise_run) if noise_run else None})
    for r in rows:  # steps relative to the smallest batch of the same variant
        first = next(x for x in rows if x["variant"] == r["variant"])
        r["step_ratio"] = (r["steps_to_target"] / first["steps_to_target"]
                           if r["steps_to_target"] and first["steps_to_target"] else None)
        r["own_step_ratio"] = (r["steps_to_own_target"] / first["steps_to_own_target"]
                               if r["steps_to_own_target"] and first["steps_to_own_target"] else None)
    return {"metric": metric, "target": target, "rows": rows, "points": points, "advisor": advisor(rows),
            "args": {k: v for k, v in vars(args).items()}}


def critical_batch(reached: list[tuple[int, float]]) -> tuple[float | None, float | None, float | None]:
    """(B_crit, S_min, E_min) from (batch, steps to target) pairs by McCandlish et al.'s S(B) = S_min + E_min / B
    (least squares in 1/B): B_crit = E_min / S_min, where twice the minimal steps and twice the minimal
    examples are needed. None when fewer than two batches reached the target or steps did not fall with B
    (S_min <= 0 means still perfect scaling: B_crit lies beyond the batches tried)."""
    if len(reached) < 2:
        return None, None, None
    x = np.asarray([1.0 / b for b, _ in reached])
    y = np.asarray([s for _, s in reached], float)
    e_min, s_min = np.polyfit(x, y, 1)
    if e_min <= 0 or s_min <= 0:
        return None, (float(s_min) if e_min > 0 else None), float(e_min)
    return float(e_min / s_min), float(s_min), float(e_min)


def advisor(rows: list[dict]) -> list[dict]:
    """Per variant: the batch the noise scale recommends (B_simple averaged over each run, the median over
    that variant's runs; the end-of-run moving average is larger, as the gradient shrinks late in training)
    against the empirical critical batch from the steps to target, and the factor between them."""
    out = []
    for v in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == v]
        noise = [r["noise_scale_run"] for r in mine if r.get("noise_scale_run")]
        reached = [(r["batch"], r["steps_to_target"]) for r in mine if r["steps_to_target"] is not None]
        b_crit, s_min, e_min = critical_batch(reached)
        own_crit = critical_batch([(r["batch"], r["steps_to_own_target"]) for r in mine
                                   if r["steps_to_own_target"] is not None])[0]
        fewest = min(reached, key=lambda bs: (bs[0] * bs[1], bs[0]))[0] if reached else None
        b_simple = statistics.median(noise) if noise else None
        out.append({"variant": v, "b_simple": b_simple, "b_crit": b_crit, "s_min": s_min, "e_min": e_min,
                    "fewest_examples_batch": fewest, "b_crit_own": own_crit,
                    "factor": max(b_simple, b_crit) / min(b_simple, b_crit) if b_simple and b_crit else None,
                    "factor_own": max(b_simple, own_crit) / min(b_simple, own_crit) if b_simple and own_crit else None})
    return out


def _fmt(x, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def _write(report: dict, out: Path, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [f"target: dev {metric} >= {report['target']:.4f} (the first variant's smallest-batch best, seed median, "
             f"minus {report['args']['target_drop']}); own target: the same from each variant's own smallest batch", "",
             f"| variant | batch | seeds | steps | examples | peak lr | wall (s) | best {metric} (min-max) | final | "
             f"reached | steps to target | x smallest batch | steps to own target | x smallest batch | "
             f"B_simple (run mean) | B_simple (end) |",
             "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["rows"]:
        lines.append(
            f"| {r['variant']} | {r['batch']} | {r['seeds']} | {r['steps']} | {r['samples']} | {r['learning_rate']:.2g} | "
            f"{r['wall_time_s']:.0f} | {r['best']:.4f} ({r['best_range'][0]:.4f}-{r['best_range'][1]:.4f}) | "
            f"{r['final']:.4f} | {r['reached']} | {_fmt(r['steps_to_target'], '.0f')} | {_fmt(r['step_ratio'], '.3f')} | "
            f"{_fmt(r['steps_to_own_target'], '.0f')} (>= {r['own_target']:.4f}) | {_fmt(r['own_step_ratio'], '.3f')} | "
            f"{_fmt(r.get('noise_scale_run'), '.0f')} | {_fmt(r['noise_scale'], '.0f')} |")
    lines += ["", "| variant | B_simple (the advice) | B_crit from steps to target (S_min, E_min) | factor | "
              "B_crit from steps to own target | factor | batch with fewest examples to target |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for a in report["advisor"]:
        fit = f" ({a['s_min']:.0f}, {a['e_min']:.0f})" if a["b_crit"] else ""
        lines.append(f"| {a['variant']} | {_fmt(a['b_simple'], '.0f')} | {_fmt(a['b_crit'], '.0f')}{fit} | "
                     f"{_fmt(a['factor'], '.1f')} | {_fmt(a.get('b_crit_own'), '.0f')} | {_fmt(a.get('factor_own'), '.1f')} | "
                     f"{_fmt(a['fewest_examples_batch'], 'd')} |")
    table = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.md").write_text(table + "\n")
    (out / "sweep.json").write_text(json.dumps(report, indent=1))
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(16, 4.5))
    for v in dict.fromkeys(r["variant"] for r in report["rows"]):
        mine = [r for r in report["rows"] if r["variant"] == v]
        a.errorbar([r["batch"] for r in mine], [r["best"] for r in mine], fmt="o-", label=v,
                   yerr=[[r["best"] - r["best_range"][0] for r in mine], [r["best_range"][1] - r["best"] for r in mine]])
        hit = [r for r in mine if r["steps_to_target"]]
        line, = c.plot([r["batch"] for r in hit], [r["steps_to_target"] for r in hit], "o-", label=f"{v}: target")
        own = [r for r in mine if r["steps_to_own_target"]]
        c.plot([r["batch"] for r in own], [r["steps_to_own_target"] for r in own], "s--", color=line.get_color(),
               label=f"{v}: own target")
    for p in report["points"]:
        if p["seed"] == report["points"][0]["seed"]:
            b.plot(*zip(*p["evals"]), ".-", label=f"{p['variant']} b{p['batch']}", alpha=0.8)
    a.axhline(report["target"], ls=":", c="gray")
    a.set(xscale="log", xlabel="global batch", ylabel=f"best dev {metric}", title="after a fixed number of examples")
    b.axhline(report["target"], ls=":", c="gray")
    b.set(xscale="log", xlabel="optimizer steps", ylabel=f"dev {metric}", title="dev metric vs steps")
    first = report["rows"][0]
    if first["steps_to_target"]:
        bs = sorted({r["batch"] for r in report["rows"]})
        c.plot(bs, [first["steps_to_target"] * bs[0] / x for x in bs], "k:", label="perfect scaling")
    c.set(xscale="log", yscale="log", xlabel="global batch", ylabel="steps to target", title="steps to target")
    for ax in (a, b, c):
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "sweep.png", dpi=100)
    print(table)
    print(f"written: {out}/sweep.md, sweep.json, sweep.png")


if __name__ == "__main__":
    sys.exit(cli.reported(run, sys.argv[1:]))
