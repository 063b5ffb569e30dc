"""Gradient accumulation cost: k micro-batches vs one k-times-larger batch, for the in-jit scan and for
optax.MultiSteps. Prints the step-time ratio (target <= 1.05) and the compiled per-device memory ratio
(target <= 0.3), both measured in this run against the one-big-batch step.

    python benchmarks/accumulation.py [--preset minilm-l6] [--micro 4] [--k 8] [--seq 64]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax

from jaxbatch import config, memory
from jaxbatch import run as run_lib

sys.path.insert(0, "benchmarks")
from step_throughput import make_batch  # noqa: E402


def measure(cfg, batch: dict, n: int) -> tuple[float, int]:
    mem = memory.step_memory(cfg, cfg.train.accum_steps)
    run = run_lib.setup(cfg)
    batch = {k: jax.device_put(v, run.batch_sh[k]) for k, v in batch.items()}
    times, state = [], run.state
    for i in range(n + 1):
        t0 = time.perf_counter()
        state, m = run.steps.train(state, batch)
        jax.block_until_ready(m["loss"])
        if i:  # the first call compiles
            times.append(time.perf_counter() - t0)
    return statistics.median(times), mem.total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="minilm-l6")
    p.add_argument("--micro", type=int, default=4)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    big = args.micro * args.k
    base = [f"model.preset={args.preset}", "model.task=token", "model.num_labels=9", f"data.seq_len={args.seq}",
            f"train.batch_size={big}", "model.hidden_dropout=0", "train.steps=1000"]
    batch = make_batch(config.build(base).model.vocab_size, big, args.seq, 9)
    t_big, m_big = measure(config.build(base), batch, args.steps)
    print(f"device: {jax.device_count()} x {jax.devices()[0].device_kind}; BERT {args.preset}, global batch {big} "
          f"x seq {args.seq}")
    print(f"one batch of {big}         : {t_big * 1e3:8.1f} ms/step, {m_big / 2**20:8.1f} MiB per device")
    for impl in ("scan", "multisteps"):
        cfg = config.build(base + [f"train.accum_steps={args.k}", f"train.accum_impl={impl}"])
        t, m = measure(cfg, batch, args.steps)
        print(f"{impl:10s} k={args.k} x {args.micro:3d}   : {t * 1e3:8.1f} ms/step, {m / 2**20:8.1f} MiB per device;"
              f" time ratio {t / t_big:.3f}, memory ratio {m / m_big:.3f}")


if __name__ == "__main__":
    main()
