"""Train-step throughput on whatever this machine has, in one table: bf16 tokens/s and MFU for a BERT-base
and a GPT-2 350M shape (and LLaMA-1B when it fits) on a GPU/TPU, with HF transformers + torch eager on the
same device for the ratio when torch sees it. On a CPU it runs tiny shapes in fp32 (the suite runs it so).

    python benchmarks/device.py [--steps 10] [--json out.json]

MFU is model FLOPs (6N + attention, models/*.py) per second over the chip's bf16 peak from the spec table
(jaxbatch/topology.py), or over a measured fp32 matmul on a CPU. On an NVIDIA GPU each model runs with both
attention kernels (`model.attention_impl`: xla, and auto = cuDNN's fused attention), and a first table times
the attention core alone (forward + backward) with each kernel and mask form, with its error against XLA's.
Rows are printed and written to --json as they are measured, so a run cut short keeps what it measured.
Budget: about 8 minutes on one GPU.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp

import step_throughput as st
from jaxbatch import config, metrics, models, topology
from jaxbatch.models import layers

ACCELERATOR_SHAPES = [  # (family, preset, batch, seq), smallest first: a run cut short keeps the first rows
    ("bert", "bert-base", 32, 512),
    ("gpt2", "gpt2-350m", 16, 1024),
    ("llama", "llama-1b", 8, 2048),
]
CPU_SHAPES = [("bert", "tiny", 8, 64), ("gpt2", "gpt-tiny", 8, 64), ("llama", "llama-tiny", 8, 64)]
ATTENTION_SHAPES = [  # (name, batch, seq, heads, head_dim, causal): the attention cores of the model shapes
    ("gpt2-350m", 16, 1024, 16, 64, True),
    ("bert-base", 32, 512, 12, 64, False),
]


def _config(family: str, preset: str, batch: int, seq: int, precision: str, tiny: bool,
            attention: str) -> config.Config:
    task = ["model.task=token", "model.num_labels=9"] if family == "bert" else [
        "model.task=lm", "data.name=text", "model.hidden_dropout=0.0"]
    vocab = {"bert": 0, "gpt2": 50304, "llama": 32000}[family] if not tiny else {"bert": 0}.get(family, 256)
    vocab = [f"model.vocab_size={vocab}"] if vocab else []
    return config.build([f"model.preset={preset}", *task, *vocab, f"train.batch_size={batch}", f"data.seq_len={seq}",
                         f"precision.policy={precision}", "optim.name=adamw", "train.steps=1000",
                         "train.progress=false", f"model.attention_impl={attention}"])


def _torch_device(platform: str) -> str | None:
    try:
        import torch
    except ImportError:
        return None
    if platform == "gpu":
        return "cuda" if torch.cuda.is_available() else None
    return "cpu" if platform == "cpu" else None


def _release_torch_memory(torch_device: str | None) -> None:
    gc.collect()
    if torch_device == "cuda":
        import torch

        torch.cuda.empty_cache()


def _time(f, *args, n: int = 10) -> float:
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def attention_rows(n: int) -> list[dict]:
    """Forward + backward of the attention core in bf16 with each kernel: XLA with the boolean mask (what
    attention_impl=xla runs), cuDNN with that mask as a full (batch, 1, q, k) bias (what auto runs), and cuDNN
    with the mask as a kernel mode instead (causal / key lengths: the bound without a bias). Half the rows are
    padding or a second document, so the masks matter; errors are over the rows that see any key."""
    rows = []
    for name, b, t, heads, d, causal in ATTENTION_SHAPES:
        kq, kk, kv, kg = jax.random.split(jax.random.key(0), 4)
        q, k, v, g = (jax.random.normal(key, (b, t, heads, d), jnp.bfloat16) for key in (kq, kk, kv, kg))
        lengths = jnp.where(jnp.arange(b) % 2 == 0, t, t // 2).astype(jnp.int32)
        valid = jnp.arange(t)[None, :] < lengths[:, None]  # (b, t): padding after `lengths`
        if causal:
            mask = jnp.tril(jnp.ones((t, t), bool))[None] & valid[:, None, :] & valid[:, :, None]
            mask = mask[:, None]
        else:
            mask = valid[:, None, None, :]
        kernel_mask = dict(is_causal=causal, query_seq_lengths=lengths, key_value_seq_lengths=lengths,
                           implementation="cudnn")
        variants = {
            "xla, boolean mask": lambda q, k, v: layers.attend(q, k, v, mask, jnp.bfloat16, impl="xla"),
            "cudnn, mask as bias (auto)": lambda q, k, v: layers.attend(q, k, v, mask, jnp.bfloat16, impl="auto"),
            "cudnn, kernel mask (no bias)": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, **kernel_mask),
        }
        reference = None
        for kernel, attention in variants.items():
            def loss(q, k, v, attention=attention):
                y = attention(q, k, v)
                return (y.astype(jnp.float32) * g.astype(jnp.float32) * valid[:, :, None, None]).sum(), y

            f = jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True))
            row = {"shape": f"{name}: {b} x {t}, {heads} heads x {d}", "kernel": kernel}
            try:
                seconds = _time(f, q, k, v, n=n)
                (_, y), grads = f(q, k, v)
            except Exception as e:  # noqa: BLE001 - a kernel this cuDNN refuses is a row, not the end of the run
                rows.append({**row, "failed": str(e).splitlines()[0][:120]})
                print(rows[-1], flush=True)
                continue
            outs = [y * valid[:, :, None, None], *grads]
            if reference is None:
                reference = outs
            err = max(float(jnp.max(jnp.abs(a.astype(jnp.float32) - r.astype(jnp.float32))))
                      for a, r in zip(outs, reference))
            rows.append({**row, "ms": seconds * 1e3, "max_abs_err_vs_xla": err})
            print(rows[-1], flush=True)
    return rows


def model_rows(shapes, precision: str, attentions: list[str], peak: float, torch_device: str | None, on_cpu: bool,
               steps: int, warmup: int, save) -> list[dict]:
    rows = []
    for family, preset, batch, seq in shapes:
        tokens = batch * seq
        torch_tokens = None
        for attention in attentions:
            cfg = _config(family, preset, batch, seq, precision, tiny=on_cpu, attention=attention)
            data = st.bench_batch(cfg, family, batch, seq)
            flops = models.family(cfg.model).train_flops_per_token(cfg.model, seq) * tokens
            row = {"model": preset, "shape": f"{batch} x {seq}", "precision": precision, "attention": attention}
            t0 = time.perf_counter()
            print(f"{preset} {batch} x {seq}, attention {attention}: set-up, compile and {warmup + steps} steps ...",
                  flush=True)
            try:
                t = st.bench_jax(cfg, data, steps, warmup)
            except jax.errors.JaxRuntimeError as e:  # e.g. LLaMA-1B on a small card
                if "RESOURCE_EXHAUSTED" not in str(e):
                    raise
                rows.append({**row, "skipped": "out of device memory"})
                continue
            finally:
                gc.collect()
            row.update(jax_tokens_per_s=tokens / t, mfu=flops / t / (peak * jax.device_count()),
                       wall_s=time.perf_counter() - t0)
            if torch_device is not None and torch_tokens is None:
                try:
                    tt = st.bench_torch(cfg.model, data, steps, warmup, cfg.optim.learning_rate,
                                        device=torch_device, bf16=precision == "bf16")
                    torch_tokens = tokens / tt
                except RuntimeError as e:  # torch out of memory
                    torch_tokens = f"failed: {str(e).splitlines()[0][:60]}"
                _release_torch_memory(torch_device)
            if isinstance(torch_tokens, float):
                row.update(torch_tokens_per_s=torch_tokens, ratio=row["jax_tokens_per_s"] / torch_tokens)
            elif torch_tokens:
                row["torch"] = torch_tokens
            rows.append(row)
            print(row, flush=True)
            save(rows)
    return rows


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)
    device = jax.devices()[0]
    on_cpu, on_gpu = device.platform == "cpu", device.platform == "gpu"
    shapes, precision = (CPU_SHAPES, "fp32") if on_cpu else (ACCELERATOR_SHAPES, "bf16")
    attentions = ["xla", "auto"] if on_gpu else ["auto"]  # auto is XLA's kernel on CPUs and TPUs
    chip = topology.chip_for_kind(device.device_kind)
    peak = metrics.measure_matmul_flops() if on_cpu or chip is None else chip.peak_flops
    torch_device = _torch_device(device.platform)
    result = {"device": device.device_kind, "count": jax.device_count(), "attention": [], "rows": []}

    def save(rows=None, attention=None):
        result["rows"] = rows if rows is not None else result["rows"]
        result["attention"] = attention if attention is not None else result["attention"]
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)

    if on_gpu:
        result["measured_bf16_matmul_tflops"] = metrics.measure_matmul_flops((8192,), jnp.bfloat16) / 1e12
        print(f"measured bf16 matmul (8192^3, ones): {result['measured_bf16_matmul_tflops']:.0f} TFLOP/s", flush=True)
        save(attention=attention_rows(args.steps))
    rows = model_rows(shapes, precision, attentions, peak, torch_device, on_cpu, args.steps, args.warmup, save)
    peak_from = "measured fp32 matmul" if on_cpu or chip is None else f"{chip.name} bf16 spec"
    print(f"device: {jax.device_count()} x {device.device_kind}; peak {peak / 1e12:.1f} TFLOP/s per device "
          f"({peak_from}); torch: {torch_device or 'does not see this device'}")
    if result["attention"]:
        print("| attention core | kernel | forward + backward ms | max abs error vs XLA |")
        print("|---|---|---:|---:|")
        for r in result["attention"]:
            cells = r["failed"] if "failed" in r else f"{r['ms']:.2f} | {r['max_abs_err_vs_xla']:.2e}"
            print(f"| {r['shape']} | {r['kernel']} | {cells} |")
    print("| model | batch x seq | precision | attention | jaxbatch tokens/s | MFU | torch eager tokens/s | "
          "jaxbatch / torch |")
    print("|---|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['model']} | {r['shape']} | {r['precision']} | {r['attention']} | {r['skipped']} | | | |")
            continue
        torch_col = f"{r['torch_tokens_per_s']:,.0f}" if "torch_tokens_per_s" in r else r.get("torch", "-")
        ratio = f"{r['ratio']:.2f}x" if "ratio" in r else "-"
        print(f"| {r['model']} | {r['shape']} | {r['precision']} | {r['attention']} | {r['jax_tokens_per_s']:,.0f} | "
              f"{r['mfu']:.1%} | {torch_col} | {ratio} |")
    save(rows)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
