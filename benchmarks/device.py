"""Train-step throughput on whatever this machine has, in one table: bf16 tokens/s and MFU for a BERT-base
and a GPT-2 350M shape (and LLaMA-1B when it fits) on a GPU/TPU, with HF transformers + torch eager on the
same device for the ratio when torch sees it. On a CPU it runs tiny shapes in fp32 (the suite runs it so).

    python benchmarks/device.py [--steps 10] [--json out.json]

MFU is model FLOPs (6N + attention, models/*.py) per second over the chip's bf16 peak from the spec table
(jaxbatch/topology.py), or over a measured fp32 matmul on a CPU. Budget: about 8 minutes on one GPU.
"""

from __future__ import annotations

import argparse
import json
import sys

import jax

import step_throughput as st
from jaxbatch import config, metrics, models, topology

ACCELERATOR_SHAPES = [  # (family, preset, batch, seq)
    ("bert", "bert-base", 32, 512),
    ("gpt2", "gpt2-350m", 16, 1024),
    ("llama", "llama-1b", 8, 2048),
]
CPU_SHAPES = [("bert", "tiny", 8, 64), ("gpt2", "gpt-tiny", 8, 64), ("llama", "llama-tiny", 8, 64)]


def _config(family: str, preset: str, batch: int, seq: int, precision: str, tiny: bool) -> config.Config:
    task = ["model.task=token", "model.num_labels=9"] if family == "bert" else [
        "model.task=lm", "data.name=text", "model.hidden_dropout=0.0"]
    vocab = {"bert": 0, "gpt2": 50304, "llama": 32000}[family] if not tiny else {"bert": 0}.get(family, 256)
    vocab = [f"model.vocab_size={vocab}"] if vocab else []
    return config.build([f"model.preset={preset}", *task, *vocab, f"train.batch_size={batch}", f"data.seq_len={seq}",
                         f"precision.policy={precision}", "optim.name=adamw", "train.steps=1000",
                         "train.progress=false"])


def _torch_device(platform: str) -> str | None:
    try:
        import torch
    except ImportError:
        return None
    if platform == "gpu":
        return "cuda" if torch.cuda.is_available() else None
    return "cpu" if platform == "cpu" else None


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)
    device = jax.devices()[0]
    on_cpu = device.platform == "cpu"
    shapes, precision = (CPU_SHAPES, "fp32") if on_cpu else (ACCELERATOR_SHAPES, "bf16")
    chip = topology.chip_for_kind(device.device_kind)
    peak = metrics.measure_matmul_flops() if on_cpu or chip is None else chip.peak_flops
    torch_device = _torch_device(device.platform)
    rows = []
    for family, preset, batch, seq in shapes:
        cfg = _config(family, preset, batch, seq, precision, tiny=on_cpu)
        data = st.bench_batch(cfg, family, batch, seq)
        tokens = batch * seq
        flops = models.family(cfg.model).train_flops_per_token(cfg.model, seq) * tokens
        row = {"model": preset, "shape": f"{batch} x {seq}", "precision": precision}
        try:
            t = st.bench_jax(cfg, data, args.steps, args.warmup)
        except jax.errors.JaxRuntimeError as e:  # e.g. LLaMA-1B on a small card
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            rows.append({**row, "skipped": "out of device memory"})
            continue
        row.update(jax_tokens_per_s=tokens / t, mfu=flops / t / (peak * jax.device_count()))
        if torch_device is not None:
            try:
                tt = st.bench_torch(cfg.model, data, args.steps, args.warmup, cfg.optim.learning_rate,
                                    device=torch_device, bf16=precision == "bf16")
                row.update(torch_tokens_per_s=tokens / tt, ratio=tt / t)
            except RuntimeError as e:  # torch out of memory
                row["torch"] = f"failed: {str(e).splitlines()[0][:60]}"
        rows.append(row)
    peak_from = "measured fp32 matmul" if on_cpu or chip is None else f"{chip.name} bf16 spec"
    print(f"device: {jax.device_count()} x {device.device_kind}; peak {peak / 1e12:.1f} TFLOP/s per device "
          f"({peak_from}); torch: {torch_device or 'does not see this device'}")
    print("| model | batch x seq | precision | jaxbatch tokens/s | MFU | torch eager tokens/s | jaxbatch / torch |")
    print("|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['model']} | {r['shape']} | {r['precision']} | {r['skipped']} | | | |")
            continue
        torch_col = f"{r['torch_tokens_per_s']:,.0f}" if "torch_tokens_per_s" in r else r.get("torch", "-")
        ratio = f"{r['ratio']:.2f}x" if "ratio" in r else "-"
        print(f"| {r['model']} | {r['shape']} | {r['precision']} | {r['jax_tokens_per_s']:,.0f} | {r['mfu']:.1%} | "
              f"{torch_col} | {ratio} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device.device_kind, "count": jax.device_count(), "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
