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
    keys_p = sub.add_parser("keys", help="list every config key with its default")
    keys_p.add_argument("prefix", nargs="?", default="")
    args = parser.parse_args(argv)

    from jaxbatch import config

    if args.command == "keys":
        print("\n".join(line for line in config.describe(config.Config()).splitlines()
                        if line.strip().startswith(args.prefix)))
        return 0
    try:
        cfg = config.build(args.overrides, args.config)
        from jaxbatch import train

        summary = train.train(cfg)
    except config.ConfigError as e:
        print(f"jaxbatch: config error: {e}", file=sys.stderr)
        return 2
    final = summary["final_eval"]
    print(f"done: {summary['steps']} steps in {summary['wall_time_s']:.1f}s; final eval loss "
          f"{final.get('loss', float('nan')):.4f}, accuracy {final.get('accuracy', float('nan')):.4f}; "
          f"summary in {cfg.train.run_dir}/summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
