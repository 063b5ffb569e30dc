"""KV-cache generation against Hugging Face's `generate`, in one process, alternating rounds: a randomly
initialised transformers `GPT2LMHeadModel` (or `LlamaForCausalLM`) is saved to a temporary folder, jaxbatch
restores it as `jaxbatch generate` does (`run.restore`), and both continue the same prompts for the same number
of new tokens. Greedy by default, where the two must give the same tokens (printed); `--top-k`/`--top-p` time
sampling instead, and `--num-beams` beam search (the model then has no EOS, so every beam runs to the end; the two
must give the same best beams).

    python benchmarks/generation.py                                  # GPT-2 124M, 4 prompts x 200 new tokens
    python benchmarks/generation.py --new 600 --rounds 2
    python benchmarks/generation.py --top-k 50 --top-p 0.9
    python benchmarks/generation.py --num-beams 4 --new 50
    python benchmarks/generation.py --arch llama --kv-heads 4 --vocab 32000   # grouped-query attention, RoPE
    python benchmarks/generation.py --layers 2 --hidden 64 --heads 4 --vocab 128 --new 16 --rounds 1   # seconds
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def hf_model(folder: Path, args, positions: int):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    end = None if args.num_beams > 1 else args.vocab - 1  # no EOS in beam search: HF's and ours keep 2 x beams
    ends = dict(bos_token_id=end, eos_token_id=end)
    if args.arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 8 // 3,
            num_hidden_layers=args.layers, num_attention_heads=args.heads,
            num_key_value_heads=args.kv_heads or args.heads, max_position_embeddings=positions, **ends))
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=args.vocab, n_positions=positions, n_embd=args.hidden,
                                           n_layer=args.layers, n_head=args.heads, **ends))
    model.eval().save_pretrained(folder)
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=["gpt2", "llama"], default="gpt2")
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--kv-heads", type=int, default=0, help="llama: key/value heads (0: as many as --heads)")
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--batch", type=int, default=4, help="prompts continued at once")
    p.add_argument("--prompt-len", type=int, default=8)
    p.add_argument("--new", type=int, default=200, help="new tokens per prompt")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--num-beams", type=int, default=1, help="> 1: beam search (greedy scoring, no sampling)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()

    import torch

    from jaxbatch import generate, run as run_lib

    sampling = args.top_k > 0 or args.top_p < 1
    if sampling and args.num_beams > 1:
        p.error("--num-beams is beam search, not beam sampling: leave --top-k and --top-p out")
    temperature = 1.0 if sampling else 0.0
    prompts = np.random.default_rng(0).integers(0, args.vocab, (args.batch, args.prompt_len)).tolist()
    with tempfile.TemporaryDirectory() as folder:
        theirs = hf_model(Path(folder), args, args.prompt_len + args.new)
        restored = run_lib.restore(folder, [])

    def ours():
        if args.num_beams > 1:
            return generate.beam_search(restored.run.graphdef, restored.params, prompts, args.new,
                                        num_beams=args.num_beams)
        return generate.generate(restored.run.graphdef, restored.params, prompts, args.new, temperature=temperature,
                                 top_k=args.top_k, top_p=args.top_p)

    def hf():
        ids = torch.tensor(prompts)
        with torch.no_grad():
            out = theirs.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new,
                                  min_new_tokens=args.new, do_sample=sampling, top_k=args.top_k or None,
                                  num_beams=args.num_beams,
                                  top_p=args.top_p, temperature=temperature or None, pad_token_id=0)
        return out[:, args.prompt_len:].tolist()

    ours_tokens, hf_tokens = ours(), hf()  # compiles jaxbatch's two programs; warms torch's kernels
    times = {"jaxbatch": [], "hf": []}
    for _ in range(args.rounds):
        for name, fn in (("jaxbatch", ours), ("hf", hf)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    ratios = [o / h for o, h in zip(times["jaxbatch"], times["hf"])]
    result = {"shape": f"{args.arch} {args.layers} x {args.hidden}, {args.heads} heads"
                       f"{f' ({args.kv_heads} key/value)' if args.kv_heads else ''}, vocab {args.vocab}",
              "prompts": args.batch, "prompt_len": args.prompt_len, "new_tokens": args.new,
              "top_k": args.top_k, "top_p": args.top_p, "num_beams": args.num_beams,
              "torch_threads": torch.get_num_threads(),
              "jaxbatch_s": times["jaxbatch"], "hf_s": times["hf"], "ratio_median": statistics.median(ratios)}
    same = "best_beams_equal" if args.num_beams > 1 else "greedy_tokens_equal"
    if not sampling:
        result[same] = ours_tokens == hf_tokens
    for name in times:
        print(f"{name}: {statistics.median(times[name]):.2f} s (rounds {' / '.join(f'{t:.2f}' for t in times[name])})"
              f", {args.batch * args.new / statistics.median(times[name]):.1f} tokens/s")
    print(f"jaxbatch / HF time: {result['ratio_median']:.2f}x (median of the rounds' ratios)"
          + ("" if sampling else f"; {same.replace('_', ' ')}: {result[same]}"))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
