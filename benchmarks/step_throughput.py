"""Train-step throughput: median step time, tokens/s, model TFLOP/s and its fraction of a matmul peak
measured in the same run; optionally against PyTorch eager (the same model from HF transformers + AdamW),
in alternating rounds in one process (the box's speed drifts; each round times both sides back to back).

    python benchmarks/step_throughput.py                      # MiniLM-L6 shape, batch 32 x 128, fp32
    python benchmarks/step_throughput.py --vs-torch           # + PyTorch on the same shape, and the ratio
    python benchmarks/step_throughput.py --torch-compile      # + PyTorch eager and torch.compile
    python benchmarks/step_throughput.py --vs-torch distributed.cpu_devices=-1   # one XLA:CPU device per core
    python benchmarks/step_throughput.py --vs-torch distributed.cpu_devices=-1 distributed.cpu_one_arena=true  # + one malloc arena
    python benchmarks/step_throughput.py --preset bert-base --batch 64 --precision bf16   # a GPU shape
    python benchmarks/step_throughput.py --family gpt2 --vs-torch   # GPT-2 124M vs HF GPT2LMHeadModel
    python benchmarks/step_throughput.py --mlm --vs-torch           # MiniLM-L6 masked LM vs HF BertForMaskedLM
    python benchmarks/step_throughput.py --family llama --preset llama-tiny model.vocab_size=32000 --vs-torch
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import numpy as np

from jaxbatch import config, distributed, metrics, models
from jaxbatch import run as run_lib


def make_lm_batch(vocab: int, batch: int, seq: int, seed: int = 0) -> dict:
    """Full rows of one document each: next-token targets, one segment, positions 0..seq-1."""
    ids = np.random.default_rng(seed).integers(0, vocab, (batch, seq + 1)).astype(np.int32)
    return dict(input_ids=ids[:, :-1], labels=ids[:, 1:], segment_ids=np.ones((batch, seq), np.int32),
                positions=np.broadcast_to(np.arange(seq, dtype=np.int32), (batch, seq)).copy())


def make_mlm_batch(vocab: int, batch: int, seq: int, probability: float, seed: int = 0) -> dict:
    """Rows of [CLS] words [SEP], masked as training masks them (data/masking.py; [MASK] is id 103, as in BERT's
    vocabulary)."""
    from jaxbatch.data import masking

    ids = np.random.default_rng(seed).integers(min(1000, vocab // 2), vocab, (batch, seq)).astype(np.int32)
    ids[:, 0], ids[:, -1] = 101, 102
    rows = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    how = masking.Masking(probability, 103, vocab, (0, 100, 101, 102, 103))
    return how.apply(how.candidates(rows), [(seed, 0, 0, r) for r in range(batch)])


def make_batch(vocab: int, batch: int, seq: int, num_labels: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    ids = rng.integers(min(1000, vocab // 2), vocab, (batch, seq)).astype(np.int32)  # skip special tokens
    return dict(input_ids=ids, attention_mask=np.ones_like(ids), token_type_ids=np.zeros_like(ids),
                labels=rng.integers(0, num_labels, (batch, seq)).astype(np.int32))


DEFAULT_PRESET = {"bert": "minilm-l6", "gpt2": "gpt2-124m", "llama": "llama-tiny"}


def bench_config(family: str, preset: str, batch: int, seq: int, precision: str = "fp32",
                 overrides=(), mlm: bool = False) -> config.Config:
    """The benchmarked shape: token classification (9 tags) or a masked LM (`mlm`) for BERT, a dropout-free LM
    for decoders; a tokenizer-sized vocabulary (0) becomes 256."""
    task = ["model.task=lm", "data.name=text"] if mlm else ["model.task=token", "model.num_labels=9"] if (
        family == "bert") else ["model.task=lm", "data.name=text", "model.hidden_dropout=0.0"]
    cfg = config.build([f"model.preset={preset}", *task, f"train.batch_size={batch}", f"data.seq_len={seq}",
                        f"precision.policy={precision}", "optim.name=adamw", "train.steps=1000", *overrides])
    return config.replace(cfg, model__vocab_size=256) if cfg.model.vocab_size == 0 else cfg


def bench_batch(cfg: config.Config, family: str, batch: int, seq: int) -> dict:
    if family == "bert" and cfg.model.task == "lm":
        return make_mlm_batch(cfg.model.vocab_size, batch, seq, cfg.model.mlm_probability)
    if family == "bert":
        return make_batch(cfg.model.vocab_size, batch, seq, cfg.model.num_labels)
    return make_lm_batch(cfg.model.vocab_size, batch, seq)


def time_steps(step, n: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def jax_step(cfg: config.Config, batch: dict):
    """One jaxbatch train step on `batch`, waited for (the state carried from call to call)."""
    run = run_lib.setup(cfg)
    batch = {k: jax.device_put(v, run.batch_sh[k]) for k, v in batch.items()}
    holder = [run.state]

    def step():
        holder[0], m = run.steps.train(holder[0], batch)
        jax.block_until_ready(m["loss"])

    return step


def bench_jax(cfg: config.Config, batch: dict, n: int, warmup: int) -> float:
    return statistics.median(time_steps(jax_step(cfg, batch), n, warmup))


def torch_model(model_cfg):
    """The same architecture from transformers, randomly initialised, built from our exported config.json."""
    import torch
    import transformers

    from jaxbatch import models

    torch.manual_seed(0)
    if model_cfg.family == "bert":
        hf_cfg = transformers.BertConfig(
            vocab_size=model_cfg.vocab_size, hidden_size=model_cfg.hidden_size, num_hidden_layers=model_cfg.num_layers,
            num_attention_heads=model_cfg.num_heads, intermediate_size=model_cfg.intermediate_size,
            max_position_embeddings=model_cfg.max_position_embeddings, num_labels=model_cfg.num_labels,
            attention_probs_dropout_prob=model_cfg.attention_dropout, hidden_dropout_prob=model_cfg.hidden_dropout)
        cls = transformers.BertForMaskedLM if model_cfg.task == "lm" else transformers.BertForTokenClassification
        return cls(hf_cfg)
    hf = models.family(model_cfg).hf.hf_config(model_cfg)
    cls = transformers.GPT2LMHeadModel if model_cfg.arch == "gpt2" else transformers.LlamaForCausalLM
    config_cls = transformers.GPT2Config if model_cfg.arch == "gpt2" else transformers.LlamaConfig
    return cls(config_cls(**{k: v for k, v in hf.items() if k not in ("architectures", "model_type")}))


def torch_step(model_cfg, batch: dict, lr: float, device: str = "cpu", bf16: bool = False,
               compiled: bool = False):
    """One step of HF transformers + torch AdamW on `device` (bf16 autocast when asked): eager, or the model
    through `torch.compile` (inductor; it compiles in the first calls, the warm-up)."""
    import torch

    model = torch_model(model_cfg).to(device)
    model.train()
    forward = torch.compile(model) if compiled else model
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    if model_cfg.family == "bert":
        tb = {k: torch.from_numpy(v.astype(np.int64)).to(device) for k, v in batch.items()}
    else:  # HF shifts the labels itself: give it the inputs
        ids = torch.from_numpy(batch["input_ids"].astype(np.int64)).to(device)
        tb = {"input_ids": ids, "labels": ids}

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
            loss = forward(**tb).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    return step


def bench_torch(model_cfg, batch: dict, n: int, warmup: int, lr: float, device: str = "cpu",
                bf16: bool = False, compiled: bool = False) -> float:
    return statistics.median(time_steps(torch_step(model_cfg, batch, lr, device, bf16, compiled), n, warmup))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=["bert", "gpt2", "llama"], default="bert")
    p.add_argument("--preset", default=None, help="default: minilm-l6 (bert), gpt2-124m (gpt2), llama-tiny (llama)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--mlm", action="store_true", help="bert: a masked LM (15%% predicted) instead of token tags")
    p.add_argument("--steps", type=int, default=5, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3, help="rounds, alternating jaxbatch and PyTorch in this process")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--vs-torch", action="store_true")
    p.add_argument("--torch-compile", action="store_true", help="also PyTorch with torch.compile (implies --vs-torch)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("overrides", nargs="*", help="extra config overrides, e.g. mesh.model=2")
    args = p.parse_args()

    preset = args.preset or DEFAULT_PRESET[args.family]
    cfg = bench_config(args.family, preset, args.batch, args.seq, args.precision, args.overrides, args.mlm)
    distributed.initialize(cfg)  # distributed.cpu_devices=-1: one XLA:CPU device per core
    batch = bench_batch(cfg, args.family, args.batch, args.seq)
    devices = jax.devices()
    kind = devices[0].device_kind
    peak_dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[args.precision]
    peak = metrics.measured_peak_per_device(metrics.measure_matmul_flops(
        (4096,) if devices[0].platform != "cpu" else (1024, 2048), dtype=peak_dtype))
    tokens = args.batch * args.seq
    flops = models.train_flops_per_token(cfg.model, args.seq) * tokens

    steps = {"jaxbatch": jax_step(cfg, batch)}
    if args.vs_torch or args.torch_compile:
        import torch

        bf16 = args.precision == "bf16"  # both sides in the same precision: torch's bf16 autocast
        steps["eager"] = torch_step(cfg.model, batch, cfg.optim.learning_rate, bf16=bf16)
        if args.torch_compile:
            steps["compile"] = torch_step(cfg.model, batch, cfg.optim.learning_rate, bf16=bf16, compiled=True)
    for step in steps.values():
        time_steps(step, 0, args.warmup)
    rounds = {name: [] for name in steps}  # per round, each side's median step
    for r in range(args.rounds):
        for name, step in steps.items():
            rounds[name].append(statistics.median(time_steps(step, args.steps, 0)))
        if args.rounds > 1:
            print(f"round {r + 1}: " + ", ".join(f"{name} {t[-1] * 1e3:.0f} ms" for name, t in rounds.items()))
    t_jax = statistics.median(rounds["jaxbatch"])
    res = {"device": f"{len(devices)} x {kind}", "preset": preset, "batch": args.batch, "seq": args.seq,
           "precision": args.precision, "rounds": args.rounds, "steps_per_round": args.steps,
           "jax_step_s": t_jax, "jax_step_s_rounds": rounds["jaxbatch"], "jax_tokens_per_s": tokens / t_jax,
           "model_tflops": flops / t_jax / 1e12, "matmul_peak_tflops_per_device": peak / 1e12,
           "fraction_of_peak": flops / t_jax / (peak * len(devices))}
    print(f"device: {res['device']}; {models.family(cfg.model).describe(cfg.model)}, batch {args.batch} x seq "
          f"{args.seq}, {args.precision}, AdamW; median of {args.rounds} alternating round(s) of {args.steps} steps")
    print(f"jaxbatch : median step {t_jax * 1e3:8.1f} ms  {tokens / t_jax:10.0f} tokens/s  "
          f"{res['model_tflops']:.3f} TFLOP/s = {100 * res['fraction_of_peak']:.1f}% of measured "
          f"{args.precision} matmul peak ({peak / 1e12:.3f} TFLOP/s/device)")
    for mode in [m for m in ("eager", "compile") if m in steps]:
        t_torch = statistics.median(rounds[mode])
        ratio = statistics.median(t / j for t, j in zip(rounds[mode], rounds["jaxbatch"]))  # per round, then median
        key = "torch" if mode == "eager" else "torch_compile"
        res.update({f"{key}_step_s": t_torch, f"{key}_step_s_rounds": rounds[mode],
                    f"{key}_tokens_per_s": tokens / t_torch, f"jax_over_{key}": ratio})
        print(f"pytorch  : median step {t_torch * 1e3:8.1f} ms  {tokens / t_torch:10.0f} tokens/s  "
              f"(torch {torch.__version__}, {mode}, {'bf16 autocast, ' * bf16}{torch.get_num_threads()} threads)")
        print(f"ratio    : jaxbatch / pytorch {mode} tokens/s = {ratio:.2f}x (median of the rounds' ratios)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
