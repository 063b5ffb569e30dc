"""Train-step throughput on whatever this machine has, in one table: bf16 tokens/s and MFU for a BERT-base
and a GPT-2 350M shape (and LLaMA-1B when it fits) on a GPU/TPU, with HF transformers + torch eager on the
same device for the ratio when torch sees it. On a CPU it runs tiny shapes in fp32 (the suite runs it so).

    python benchmarks/device.py [--steps 10] [--json out.json]

MFU is model FLOPs (6N + attention, models/*.py) per second over the chip's bf16 peak from the spec table
(jaxbatch/topology.py), or over a measured fp32 matmul on a CPU. On an NVIDIA GPU each model runs with both
attention kernels (`model.attention_impl`: xla, and auto = cuDNN's fused attention), and a first table times
the attention core alone (forward + backward) with each kernel and mask form, with its error against XLA's.
Each measurement (the attention table; one model with one kernel; torch on one model) runs in its own process
under --part-timeout, so a stalled compile or an out-of-memory costs one row and every process has the whole
device; rows are written to --json as they come. JAX grows its GPU memory as needed
(XLA_PYTHON_CLIENT_PREALLOCATE=false unless set), leaving the rest to torch. Budget: about 8 minutes on one GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import step_throughput as st  # noqa: E402
from jaxbatch import config, metrics, models, topology  # noqa: E402
from jaxbatch.models import layers  # noqa: E402

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


def _shapes(platform: str) -> tuple[list, str]:
    """The model shapes and precision this platform runs: tiny fp32 ones on a CPU, bf16 ones elsewhere."""
    return (CPU_SHAPES, "fp32") if platform == "cpu" else (ACCELERATOR_SHAPES, "bf16")


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
                seconds = statistics.median(st.time_steps(lambda: jax.block_until_ready(f(q, k, v)), n, 1))
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


def jax_row(shape: tuple, attention: str, precision: str, on_cpu: bool, peak: float, steps: int,
            warmup: int) -> dict:
    family, preset, batch, seq = shape
    cfg = _config(family, preset, batch, seq, precision, tiny=on_cpu, attention=attention)
    flops = models.train_flops_per_token(cfg.model, seq) * batch * seq
    t0 = time.perf_counter()
    try:
        t = st.bench_jax(cfg, st.bench_batch(cfg, family, batch, seq), steps, warmup)
    except jax.errors.JaxRuntimeError as e:  # e.g. LLaMA-1B on a small card
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        return {"skipped": "out of device memory"}
    return {"jax_tokens_per_s": batch * seq / t, "mfu": flops / t / (peak * jax.device_count()),
            "wall_s": time.perf_counter() - t0}


def torch_tokens_per_s(shape: tuple, precision: str, on_cpu: bool, device: str, steps: int, warmup: int) -> dict:
    family, preset, batch, seq = shape
    cfg = _config(family, preset, batch, seq, precision, tiny=on_cpu, attention="auto")
    try:
        tt = st.bench_torch(cfg.model, st.bench_batch(cfg, family, batch, seq), steps, warmup,
                            cfg.optim.learning_rate, device=device, bf16=precision == "bf16")
    except RuntimeError as e:  # torch out of memory
        return {"torch": f"failed: {str(e).splitlines()[0][:60]}"}
    return {"torch_tokens_per_s": batch * seq / tt}


def run_part(part: str, args) -> dict:
    """One measurement in this process: `attention`, `jax:<shape>:<kernel>` or `torch:<shape>`."""
    device = jax.devices()[0]
    on_cpu = device.platform == "cpu"
    shapes, precision = _shapes(device.platform)
    if part == "attention":
        return {"measured_bf16_matmul_tflops": metrics.measure_matmul_flops((8192,), jnp.bfloat16) / 1e12,
                "attention": attention_rows(args.steps)}
    what, index, *kernel = part.split(":")
    if what == "torch":
        return torch_tokens_per_s(shapes[int(index)], precision, on_cpu, _torch_device(device.platform),
                                  args.steps, args.warmup)
    return jax_row(shapes[int(index)], kernel[0], precision, on_cpu, args.peak, args.steps, args.warmup)


def in_a_process(part: str, args) -> dict:
    """`run_part` in a child process: its output passed on, its result from the last line, or why there is none."""
    command = [sys.executable, os.path.abspath(__file__), "--part", part, "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--peak", str(args.peak)]
    print(f"[{time.strftime('%H:%M:%S')}] {part} ...", flush=True)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.part_timeout)
    except subprocess.TimeoutExpired as e:
        sys.stdout.write(e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout or "")
        return {"skipped": f"did not finish in {args.part_timeout} s"}
    sys.stdout.write(done.stdout)
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines or not lines[-1].startswith("RESULT "):
        sys.stdout.write(done.stderr[-3000:])
        return {"skipped": f"failed (exit {done.returncode}): {(done.stderr.strip().splitlines() or [''])[-1][:80]}"}
    return json.loads(lines[-1][len("RESULT "):])


def print_tables(result: dict, peak: float, peak_from: str, torch_device: str | None) -> None:
    print(f"device: {result['count']} x {result['device']}; peak {peak / 1e12:.1f} TFLOP/s per device "
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
    for r in result["rows"]:
        if "skipped" in r:
            print(f"| {r['model']} | {r['shape']} | {r['precision']} | {r['attention']} | {r['skipped']} | | | |")
            continue
        torch_col = f"{r['torch_tokens_per_s']:,.0f}" if "torch_tokens_per_s" in r else r.get("torch", "-")
        ratio = f"{r['ratio']:.2f}x" if "ratio" in r else "-"
        print(f"| {r['model']} | {r['shape']} | {r['precision']} | {r['attention']} | {r['jax_tokens_per_s']:,.0f} | "
              f"{r['mfu']:.1%} | {torch_col} | {ratio} |")


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--models", help="comma-separated presets to run, e.g. bert-base (default: this platform's all)")
    p.add_argument("--part-timeout", type=int, default=240, help="seconds one measurement's process may take")
    p.add_argument("--part", help=argparse.SUPPRESS)  # a child process's one measurement
    p.add_argument("--peak", type=float, default=0.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.part:
        print("RESULT " + json.dumps(run_part(args.part, args)), flush=True)
        return []
    device = jax.devices()[0]
    on_cpu, on_gpu = device.platform == "cpu", device.platform == "gpu"
    shapes, precision = _shapes(device.platform)
    presets = [s[1] for s in shapes]
    wanted = args.models.split(",") if args.models else presets
    unknown = sorted(set(wanted) - set(presets))
    if unknown:
        p.error(f"--models: {', '.join(unknown)} not among {', '.join(presets)} here")
    attentions = ["xla", "auto"] if on_gpu else ["auto"]  # auto is XLA's kernel on CPUs and TPUs
    chip = topology.chip_for_kind(device.device_kind)
    args.peak = metrics.measure_matmul_flops() if on_cpu or chip is None else chip.peak_flops
    torch_device = _torch_device(device.platform)
    result = {"device": device.device_kind, "count": jax.device_count(), "attention": [], "rows": []}

    def save():
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)

    if on_gpu:
        result.update(in_a_process("attention", args))
        save()
    for i, (family, preset, batch, seq) in enumerate(shapes):
        if preset not in wanted:
            continue
        torch = in_a_process(f"torch:{i}", args) if torch_device else {}
        for attention in attentions:
            row = {"model": preset, "shape": f"{batch} x {seq}", "precision": precision, "attention": attention,
                   **in_a_process(f"jax:{i}:{attention}", args)}
            if "torch_tokens_per_s" in torch and "jax_tokens_per_s" in row:
                row.update(torch_tokens_per_s=torch["torch_tokens_per_s"],
                           ratio=row["jax_tokens_per_s"] / torch["torch_tokens_per_s"])
            elif torch:
                row["torch"] = torch.get("torch") or torch.get("skipped")
            result["rows"].append(row)
            print(row, flush=True)
            save()
    peak_from = "measured fp32 matmul" if on_cpu or chip is None else f"{chip.name} bf16 spec"
    print_tables(result, args.peak, peak_from, torch_device)
    return result["rows"]


if __name__ == "__main__":
    main(sys.argv[1:])
