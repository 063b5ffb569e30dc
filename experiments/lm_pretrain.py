"""Character-level language-model pretraining on a text corpus (tiny shakespeare), nanoGPT's recipes.

    python -m experiments.lm_pretrain --data-dir ../shared/data/tinyshakespeare [--preset cpu|nanogpt-cpu|gpu]
                                      [--arch gpt2|llama] [--config FILE] [section.key=value ...]

Prints train/val loss, tokens/s and MFU while training, the validation loss, perplexity and bits per byte
at the end, and samples text from the trained model. Presets:
  nanogpt-cpu  nanoGPT's README CPU recipe (4 layers x 128, 4 heads, block 64, batch 12, 2000 steps,
               lr 1e-3 cosine to 1e-4, no dropout): the yardstick against nanoGPT's own wall time and val loss
  cpu          the same model trained longer with larger batches: the best val loss in ~20 min on 2 cores
  gpu          nanoGPT's shakespeare-char GPU shape (6 layers x 384, 6 heads, block 256, batch 64, dropout 0.2)
The CPU presets run one XLA:CPU device per core, data parallel (`distributed.cpu_devices`, as many as divide
the batch), which is how XLA:CPU uses more than one core on a model this small.
"""

from __future__ import annotations

import argparse
import sys

from jaxbatch import cli, config, distributed, train
from jaxbatch import run as run_lib

COMMON = ["data.name=text", "optim.name=adamw", "optim.b2=0.99", "optim.eps=1e-8", "optim.weight_decay=0.1",
          "optim.schedule=cosine", "optim.clip_norm=1.0", "train.log_every=100",
          "train.eval_batch_size=128",  # the validation split in ~10 forward batches, not ~100
          "optim.flatten=true"]  # a small model on a data-parallel mesh: adamw's moments as 2 arrays, not 136
PRESETS = {
    "nanogpt-cpu": ["model.preset=gpt-tiny", "data.seq_len=64", "train.batch_size=12", "train.steps=2000",
                    "optim.learning_rate=1e-3", "optim.min_lr_ratio=0.1", "optim.warmup_steps=100",
                    "model.hidden_dropout=0.0", "train.eval_every=2000", "train.run_dir=runs/lm_nanogpt_cpu"],
    "cpu": ["model.preset=gpt-tiny", "data.seq_len=128", "train.batch_size=32", "train.steps=3500",
            "optim.learning_rate=2e-3", "optim.warmup_steps=200", "model.hidden_dropout=0.0",
            "train.eval_every=700", "train.run_dir=runs/lm_cpu"],
    "gpu": ["model.preset=gpt-tiny", "model.num_layers=6", "model.hidden_size=384", "model.num_heads=6",
            "model.intermediate_size=1536", "data.seq_len=256", "train.batch_size=64", "train.steps=5000",
            "optim.learning_rate=1e-3", "optim.min_lr_ratio=0.1", "optim.warmup_steps=100", "model.hidden_dropout=0.2",
            "train.eval_every=500", "precision.policy=bf16", "train.run_dir=runs/lm_gpu"],
}


CPU_PRESETS = ("nanogpt-cpu", "cpu")


def main(argv: list[str]) -> dict:
    p = argparse.ArgumentParser(prog="python -m experiments.lm_pretrain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="folder of .txt files (or one file)")
    p.add_argument("--preset", choices=list(PRESETS), default="cpu")
    p.add_argument("--arch", choices=["gpt2", "llama"], default="gpt2", help="llama: RoPE, RMSNorm, SwiGLU")
    p.add_argument("--samples", type=int, default=2, help="texts to sample at the end")
    p.add_argument("--config", help="TOML/JSON config file applied over the preset, before the overrides")
    p.add_argument("overrides", nargs="*", help="section.key=value")
    args = p.parse_args(argv)
    if args.samples < 0:
        p.error(f"--samples must be >= 0 (0: none), got {args.samples}")
    arch = ["model.preset=llama-tiny"] if args.arch == "llama" else []
    base = COMMON + PRESETS[args.preset] + arch + [f"data.data_dir={args.data_dir}"]
    cfg = config.build(args.overrides, args.config, base=config.build(base))
    if args.preset in CPU_PRESETS:  # as many devices as divide the batch; the file and the overrides still win
        devices = f"distributed.cpu_devices={distributed.cpu_devices_dividing(cfg.train.batch_size)}"
        cfg = config.build(args.overrides, args.config, base=config.build(base + [devices]))
    distributed.initialize(cfg)
    result = train.train(cfg)
    final = result.summary["final_eval"]
    print(f"\nval loss {final['loss']:.4f}, perplexity {final['perplexity']:.2f}, bits/byte "
          f"{final.get('bits_per_byte', float('nan')):.4f}; {result.summary['wall_time_s']:.0f}s training, "
          f"{result.summary['tokens_per_s'] or 0:.0f} tokens/s, MFU {100 * (result.summary['mfu'] or 0):.1f}%")
    if args.samples:
        from jaxbatch import generate

        restored = run_lib.restore(cfg.train.run_dir)
        tok = restored.tokenizer
        prompts = [tok.encode("\n")] * args.samples
        length = cfg.data.seq_len - 1  # positions past the training length were never trained
        texts = generate.generate(restored.run.graphdef, restored.params, prompts, length, temperature=0.8,
                                  top_k=40, seed=0)
        for text in texts:
            print("-" * 60 + "\n" + tok.decode(text))
    return result.summary


if __name__ == "__main__":
    sys.exit(cli.reported(main, sys.argv[1:]))
