"""`jaxbatch <command> [--config FILE] [section.key=value ...]`."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jaxbatch", description="Large-batch Transformer training in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)
    train_p = sub.add_parser("train", help="train a model; overrides as section.key=value")
    train_p.add_argument("--config", help="TOML or JSON config file")
    train_p.add_argument("overrides", nargs="*", help="e.g. mesh.model=2 train.batch_size=64")
    plan_p = sub.add_parser("plan", help="choose the micro-batch from compiled memory (no training)")
    plan_p.add_argument("--config", help="TOML or JSON config file")
    plan_p.add_argument("overrides", nargs="*")
    advise_p = sub.add_parser("advise-batch", help="batch-size advice from a run's gradient noise scale")
    advise_p.add_argument("run_dir")
    keys_p = sub.add_parser("keys", help="list every config key with its default")
    keys_p.add_argument("prefix", nargs="?", default="")
    args = parser.parse_args(argv)

    from jaxbatch import config
    from jaxbatch.data.files import DataError
    from jaxbatch.hf import CheckpointError

    if args.command == "keys":
        print("\n".join(line for line in config.describe(config.Config()).splitlines()
                        if line.strip().startswith(args.prefix)))
        return 0
    if args.command == "advise-batch":
        return advise_batch(args.run_dir)
    if args.command == "plan":
        try:
            return plan(config.build(args.overrides, args.config))
        except config.ConfigError as e:
            print(f"jaxbatch: config error: {e}", file=sys.stderr)
            return 2
    try:
        cfg = config.build(args.overrides, args.config)
        from jaxbatch import distributed, train

        if distributed.initialize(cfg.distributed):
            print(distributed.describe())
        summary = train.train(cfg)
    except config.ConfigError as e:
        print(f"jaxbatch: config error: {e}", file=sys.stderr)
        return 2
    except (DataError, CheckpointError, FileNotFoundError) as e:  # bad input files: the message names them
        print(f"jaxbatch: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    final = summary["final_eval"]
    print(f"done: {summary['steps']} steps in {summary['wall_time_s']:.1f}s; final eval loss "
          f"{final.get('loss', float('nan')):.4f}, accuracy {final.get('accuracy', float('nan')):.4f}; "
          f"summary in {cfg.train.run_dir}/summary.json")
    return 0


def plan(cfg) -> int:
    import jax

    from jaxbatch import config, memory, optim
    from jaxbatch import mesh as mesh_lib

    mesh = mesh_lib.make_mesh(cfg.mesh)
    config.validate(cfg, jax.device_count())
    tx, schedule = optim.make(cfg.optim, optim.scale_hparams(cfg.optim, cfg.train.batch_size), cfg.train.steps)
    budget = memory.device_budget(cfg.train.memory_budget_gb)
    print(f"mesh {mesh_lib.describe(mesh)}; global batch {cfg.train.batch_size} x seq {cfg.data.seq_len}; "
          f"budget {budget / 2**30:.2f} GiB per device")
    chosen = memory.plan_micro_batch(cfg, mesh, tx, schedule, budget)
    print(f"plan: train.accum_steps={chosen.accum_steps}  ({chosen.describe()})")
    return 0


def advise_batch(run_dir: str) -> int:
    import json
    from pathlib import Path

    from jaxbatch import noise_scale

    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        print(f"jaxbatch: {path} does not exist", file=sys.stderr)
        return 2
    records = [json.loads(line) for line in path.open()]
    estimates = [r["b_simple"] for r in records if r["kind"] == "noise_scale"]
    summary = Path(run_dir) / "summary.json"
    batch = json.loads(summary.read_text())["config"]["train"]["batch_size"] if summary.is_file() else None
    if batch is None:
        print(f"jaxbatch: {summary} does not exist (run not finished?)", file=sys.stderr)
        return 2
    print(noise_scale.advice(estimates[-1] if estimates else None, batch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
