"""Checkpoint cost: train-step time with an asynchronous save every `--every` steps against no saves (same
process, alternating rounds, medians), and the time to restore the full state (verified) and params only.

    python benchmarks/checkpoint.py [--preset minilm-l6] [--batch 8] [--seq 64] [--every 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax

from jaxbatch import checkpoint, config, run as run_lib, state as state_lib

sys.path.insert(0, "benchmarks")
from step_throughput import make_batch  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="minilm-l6")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    import grain

    cfg = config.build([f"model.preset={args.preset}", "model.task=token", "model.num_labels=9",
                        f"train.batch_size={args.batch}", f"data.seq_len={args.seq}", "train.steps=100000"])
    run = run_lib.setup(cfg)
    batch = {k: jax.device_put(v, run.batch_sh[k])
             for k, v in make_batch(cfg.model.vocab_size, args.batch, args.seq, 9).items() if k in run.batch_sh}
    data = iter(grain.MapDataset.range(10**6).to_iter_dataset())
    state = run.state
    state, m = run.steps.train(state, batch)  # compile
    jax.block_until_ready(m["loss"])
    folder = Path(tempfile.mkdtemp(prefix="jaxbatch-ckpt-bench-"))
    ckpt = checkpoint.Checkpointer(folder, max_to_keep=2)
    checkpoint.fingerprint(state)  # compile the fingerprint reduction too
    times = {"no saves": [], f"save every {args.every}": []}
    step = 1
    for _ in range(args.rounds):
        for name in times:
            t0 = time.perf_counter()
            for i in range(args.every):
                state, m = run.steps.train(state, batch)
                step += 1
                if name != "no saves" and i == args.every - 1:
                    ckpt.save(step, state, data, run.spec)
            jax.block_until_ready(m["loss"])
            times[name].append((time.perf_counter() - t0) / args.every)
    ckpt.manager.wait_until_finished()
    n_params = state_lib.num_params(state.params)
    t0 = time.perf_counter()
    ckpt.restore(ckpt.latest_step(), state, run.state_sh, data)
    full = time.perf_counter() - t0
    t0 = time.perf_counter()
    ckpt.restore_params(ckpt.latest_step(), run.abstract_params, run.params_sh)
    params_only = time.perf_counter() - t0
    ckpt.close()
    size = sum(f.stat().st_size for f in (folder / str(step)).rglob("*") if f.is_file())
    base = statistics.median(times["no saves"])
    saved = statistics.median(times[f"save every {args.every}"])
    print(f"device: {jax.device_count()} x {jax.devices()[0].device_kind}; {args.preset} ({n_params / 1e6:.1f}M params), "
          f"batch {args.batch} x {args.seq}, AdamW; checkpoint {size / 2**20:.0f} MiB")
    print(f"step time, no saves          : {base * 1e3:8.1f} ms (median of {args.rounds} rounds x {args.every} steps)")
    print(f"step time, save every {args.every:3d}     : {saved * 1e3:8.1f} ms -> overhead {100 * (saved / base - 1):+.1f}%")
    print(f"restore full state (verified): {full:8.2f} s; params only (verified): {params_only:.2f} s")


if __name__ == "__main__":
    main()
