"""Shared driver of the fine-tuning experiments: train, evaluate dev (and optionally test), report, save JSON.

The recipes' DEFAULTS turn on one malloc arena (`distributed.cpu_one_arena`), which a MiniLM-sized CPU step
needs to keep its buffers out of the kernel's page-fault path (jaxbatch/host.py), and keep JAX's one CPU
device: for a 22.6M-parameter model two data-parallel devices repeat the AdamW update on both cores and
all-reduce 90 MB of gradients a step, which the short batches of these tasks do not amortise (MiniLM at batch 32: one device 24% faster at 16 tokens, 7% at
32, even at 64; two devices 20% faster at 128; benchmarks/README.md, "Session 11"). For long sequences set
`distributed.cpu_devices=-1`: the command line's `distributed.*` overrides win."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from jaxbatch import config, distributed, evaluate, losses, metrics, train


def configure(defaults: list[str], overrides: list[str], config_file: str | None = None) -> config.Config:
    """The recipe's config (its defaults <- the user's file <- the user's overrides), then JAX started with it
    (`distributed.initialize`, before anything touches a device)."""
    cfg = config.build(overrides, config_file, base=config.build(defaults))
    if distributed.initialize(cfg):
        print(distributed.describe())
    return cfg


def run(name: str, defaults: list[str], argv: list[str], description: str) -> dict:
    p = argparse.ArgumentParser(prog=f"python -m experiments.{name}", description=description)
    p.add_argument("--data-dir", required=True, help="folder with the dataset's files")
    p.add_argument("--test-split", action="store_true", help="also evaluate the test split, if the folder has one")
    p.add_argument("--config", help="TOML/JSON config file applied before the overrides")
    p.add_argument("overrides", nargs="*", help="section.key=value")
    args = p.parse_args(argv)
    cfg = configure(defaults + [f"data.data_dir={args.data_dir}"], args.overrides, args.config)
    result = train.train(cfg)
    data, run_dir = result.data, Path(cfg.train.run_dir)
    results = {"dev": result.summary["final_eval"]}
    if args.test_split:
        if data.test is None:
            print(f"--test-split: {args.data_dir} has no test split; skipped")
        else:
            test = evaluate.evaluate(result.run, result.state.params, data.test, data.label_names, data.task,
                                     windows=data.windows.get("test"))
            if data.test_labelled:
                results["test"] = evaluate.recorded(test)
            elif data.task == "qa":  # SQuAD's predictions file: {question id: answer}, what its script scores
                path = run_dir / "test_predictions.json"
                path.write_text(json.dumps({a["id"]: a["answer"] for a in test["predictions"]}, indent=1))
                print(f"test split has no answers; predictions written to {path}")
            else:  # e.g. GLUE: test labels are hidden, so write predictions in the GLUE submission layout
                path = run_dir / "test_predictions.tsv"
                as_text = {losses.REGRESSION: lambda p: f"{float(p):.3f}",  # multi-label: the classes, comma-separated
                           losses.MULTI_LABEL: lambda p: ",".join(n for n, y in zip(data.label_names, p) if y)}.get(
                    data.problem_type, lambda p: str(int(np.ravel(p)[0])))
                path.write_text("index\tprediction\n" + "".join(
                    f"{i}\t{as_text(p)}\n" for i, p in enumerate(test["predictions"])))
                print(f"test split has no labels; predictions written to {path}")
    for split, r in results.items():
        if "entities" in r:
            print(f"{split}: loss {r['loss']:.4f}, accuracy {r['accuracy']:.4f}, entity micro F1 "
                  f"{r['entities']['micro avg']['f1-score']:.4f}")
            print(metrics.format_entity_report(r["entities"]))
        else:  # a sequence head's line: loss, then accuracy, F1 or correlations as it reports
            print(f"{split}: " + evaluate.report_lines(r))
    (run_dir / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True))
    print(f"results in {run_dir}/results.json")
    return results


if __name__ == "__main__":  # the recipes' driver, not a recipe: it did nothing and exited 0
    raise SystemExit("experiments.finetune is the driver the fine-tuning recipes share; run one of them: python -m "
                     "experiments.conll2003_ner, experiments.sst2 or experiments.squad (--help for each)")
