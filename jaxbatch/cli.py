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
    export_p = sub.add_parser("export", help="write a finished run's model as a Hugging Face folder")
    export_p.add_argument("run_dir")
    export_p.add_argument("out_dir")
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
    if args.command == "export":
        return export(args.run_dir, args.out_dir)
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


def export(run_dir: str, out_dir: str) -> int:
    """Restores the run's latest checkpoint (on this machine's devices) and writes config.json,
    model.safetensors and the tokenizer files, loadable by transformers' BertFor*Classification."""
    import json
    from pathlib import Path

    import jax

    from jaxbatch import accumulate, checkpoint, config, hf, optim
    from jaxbatch import mesh as mesh_lib
    from jaxbatch import state as state_lib
    from jaxbatch.data import tasks

    summary_path = Path(run_dir) / "summary.json"
    if not summary_path.is_file():
        print(f"jaxbatch: {summary_path} does not exist (run not finished?)", file=sys.stderr)
        return 2
    summary = json.loads(summary_path.read_text())
    cfg = config.from_dict(summary["config"])
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.model = -1, 1, 1  # export needs no model parallelism
    mesh = mesh_lib.make_mesh(cfg.mesh)
    tx, _ = optim.make(cfg.optim, optim.scale_hparams(cfg.optim, cfg.train.batch_size), cfg.train.steps)
    tx = accumulate.wrap(tx, cfg.train)
    init = state_lib.init_fn(cfg.model, cfg.precision.policy, tx, cfg.train.seed, cfg.precision)
    abstract = jax.eval_shape(init)
    shardings = state_lib.shardings(abstract, mesh, cfg.mesh.rules)
    ckpt = checkpoint.Checkpointer(cfg.checkpoint.directory or Path(run_dir) / "checkpoints")
    step = ckpt.latest_step()
    if step is None:
        print(f"jaxbatch: no checkpoint in {ckpt.directory}", file=sys.stderr)
        return 2
    restored = ckpt.manager.restore(step, args=checkpoint.ocp.args.Composite(
        state=checkpoint.ocp.args.StandardRestore(checkpoint.abstract_with_shardings(abstract, shardings))))
    ckpt.close()
    tokenizer = tasks.tokenizer_for(cfg.model, tasks.synthetic.vocabulary())
    out = hf.export(restored.state.params, cfg.model, out_dir, tokenizer, summary.get("label_names"))
    print(f"exported step {step} of {run_dir} to {out}")
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
