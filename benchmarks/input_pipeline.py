"""Input-pipeline throughput (tokenize + grain shuffle/batch + global-array assembly) on SST-2 and CoNLL,
against the train step's consumption on the same machine in the same run.

    python benchmarks/input_pipeline.py --data-root ../shared/data [--steps 3]
"""

from __future__ import annotations

import argparse
import time

import jax

from jaxbatch import config, mesh as mesh_lib, run as run_lib, steps as steps_lib
from jaxbatch.data import pipeline, tasks


def pipeline_rate(data: tasks.TaskData, batch: int, seconds: float = 5.0) -> tuple[float, float]:
    """(examples/s, real tokens/s) of grain batches turned into global jax.Arrays."""
    cfg = config.build(["mesh.data=-1"])
    mesh = mesh_lib.make_mesh(cfg.mesh)
    sh = steps_lib.batch_shardings(mesh, cfg.mesh.rules, data.train)
    n_steps = max(1, len(data.train["labels"]) * 3 // batch)
    it = iter(pipeline.train_dataset(data.train, batch, n_steps, seed=0))
    examples = tokens = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        try:
            local = next(it)
        except StopIteration:
            break
        jax.block_until_ready(pipeline.to_global(local, sh))
        examples += batch
        tokens += int(local["attention_mask"].sum())
    dt = time.perf_counter() - t0
    return examples / dt, tokens / dt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", required=True)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    import sys

    sys.path.insert(0, "benchmarks")
    from step_throughput import bench_jax, make_batch

    for name, sub, seq in (("sst2", "sst2", 64), ("conll2003", "conll2003", 128)):
        cfg = config.build(["model.preset=minilm-l6", "model.pretrained=minilm-l6", f"data.name={name}",
                            f"data.data_dir={args.data_root}/{sub}", f"data.seq_len={seq}",
                            f"train.batch_size={args.batch}"])
        t0 = time.perf_counter()
        data = tasks.load(cfg.data, run_lib.tokenizer(cfg))
        n = len(data.train["labels"])
        prep = time.perf_counter() - t0
        ex_s, tok_s = pipeline_rate(data, args.batch)
        cfg = config.replace(cfg, model__task="token", model__num_labels=9, model__pretrained="")
        step_s = bench_jax(cfg, make_batch(cfg.model.vocab_size, args.batch, seq, 9), args.steps, 1)
        consume = args.batch / step_s
        pad = pipeline.padding_stats(data.train).padding_fraction
        print(f"{name}: load+tokenize {n} train examples in {prep:.1f}s ({n / prep:.0f} ex/s); pipeline "
              f"{ex_s:.0f} ex/s, {tok_s:.0f} real tokens/s (padding {100 * pad:.0f}%); train step (MiniLM, batch "
              f"{args.batch} x {seq}) consumes {consume:.1f} ex/s; ratio {ex_s / consume:.0f}x")


if __name__ == "__main__":
    main()
