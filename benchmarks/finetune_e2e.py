"""End-to-end time to accuracy, the number users feel: fine-tune pretrained MiniLM-L6 for NER with jaxbatch
(`experiments.conll2003_ner`'s recipe) and with a plain PyTorch + Hugging Face loop, in one run, on the same
tokenized examples with the same hyper-parameters; print each one's wall time to train and dev entity F1.

    python benchmarks/finetune_e2e.py --data-dir ../shared/data/conll2003            # 1300 steps each
    python benchmarks/finetune_e2e.py --steps 300 --json e2e.json                     # a shorter run
    python benchmarks/finetune_e2e.py --data synthetic --steps 20 data.seq_len=32     # offline, minutes
    python benchmarks/finetune_e2e.py --steps 300 distributed.cpu_devices=-1          # one XLA:CPU device per core

jaxbatch runs with the recipe's own set-up (its DEFAULTS through `experiments/finetune.configure`: on CPU
one device and one malloc arena); the command line's overrides win.

The PyTorch loop is what an HF user writes: `BertForTokenClassification.from_pretrained`, AdamW (no decay
on biases and LayerNorm), linear warmup then linear decay (`get_linear_schedule_with_warmup`), clipping at
1.0, hidden dropout 0.1, and dynamic padding (each batch cut to its longest sequence). Attention-probability
dropout is 0 on both sides (jaxbatch's attention goes through fused kernels, which take none). "train" is
the wall time from the start of training (jaxbatch: set-up, compilation and the loop; PyTorch: model load
and the loop) to the last step, without data preparation (shared) and without the final dev evaluation
(timed separately).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments import conll2003_ner, finetune  # noqa: E402
from jaxbatch import config, hf, metrics, train  # noqa: E402


def run_jaxbatch(cfg: config.Config) -> tuple[dict, object]:
    t0 = time.perf_counter()
    result = train.train(cfg)
    total = time.perf_counter() - t0
    s = result.summary
    return {"train_s": s["setup_s"] - s["data_s"] + s["wall_time_s"] - s["eval_s"], "eval_s": s["eval_s"],
            "total_s": total, "dev_entity_f1": s["final_eval"]["entity_f1"], "steps": s["steps"]}, result.data


def run_torch(data, cfg: config.Config, seed: int = 0) -> dict:
    """The plain PyTorch + HF loop on jaxbatch's tokenized arrays (same examples, same labels)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.perf_counter()
    model = transformers.BertForTokenClassification.from_pretrained(
        str(hf.resolve(cfg.model.pretrained)), num_labels=len(data.label_names), attention_probs_dropout_prob=0.0,
        hidden_dropout_prob=cfg.model.hidden_dropout)
    model.train()
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
    o = cfg.optim
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=o.learning_rate, betas=(o.b1, o.b2), eps=o.eps)
    sched = transformers.get_linear_schedule_with_warmup(opt, o.warmup_steps, cfg.train.steps)
    arrays = {k: torch.from_numpy(v.astype(np.int64)) for k, v in data.train.items()
              if k in ("input_ids", "attention_mask", "token_type_ids", "labels")}
    n, b = len(arrays["labels"]), cfg.train.batch_size
    gen = torch.Generator().manual_seed(seed)
    order, at = torch.randperm(n, generator=gen), 0
    for _ in range(cfg.train.steps):
        if at + b > n:
            order, at = torch.randperm(n, generator=gen), 0
        idx = order[at: at + b]
        at += b
        length = int(arrays["attention_mask"][idx].sum(1).max())  # dynamic padding
        batch = {k: v[idx, :length] for k, v in arrays.items()}
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    model.eval()
    preds = []
    dev = {k: torch.from_numpy(v.astype(np.int64)) for k, v in data.eval.items()
           if k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        for s in range(0, len(dev["input_ids"]), 64):
            preds.append(model(**{k: v[s: s + 64] for k, v in dev.items()}).logits.argmax(-1).numpy())
    gold, pred = metrics.aligned_tags(np.concatenate(preds), data.eval["labels"], data.label_names)
    f1 = metrics.entity_report(gold, pred)["micro avg"]["f1-score"]
    return {"train_s": train_s, "eval_s": time.perf_counter() - t1, "dev_entity_f1": f1, "steps": cfg.train.steps}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="", help="CoNLL-2003 folder")
    p.add_argument("--data", choices=["conll2003", "synthetic"], default="conll2003")
    p.add_argument("--steps", type=int, default=1300)
    p.add_argument("--json", help="also write the results here")
    p.add_argument("overrides", nargs="*", help="jaxbatch config overrides (both loops read the optimizer and batch)")
    args = p.parse_args(argv)
    data = ["data.name=synthetic_ner"] if args.data == "synthetic" else [f"data.data_dir={args.data_dir}"]
    run_dir = tempfile.mkdtemp(prefix="e2e-")
    cfg = finetune.configure([*conll2003_ner.DEFAULTS, *data, f"train.steps={args.steps}", "train.eval_every=0",
                              "train.progress=false", f"train.run_dir={run_dir}"], args.overrides)
    jx, task_data = run_jaxbatch(cfg)
    pt = run_torch(task_data, cfg)
    res = {"jaxbatch": jx, "torch": pt, "time_ratio": jx["train_s"] / pt["train_s"],
           "f1_delta_points": 100 * (jx["dev_entity_f1"] - pt["dev_entity_f1"]),
           "steps": args.steps, "batch": cfg.train.batch_size, "seq_len": cfg.data.seq_len, "buckets": cfg.data.buckets}
    print("| loop | train wall (s) | s / step | dev entity F1 |\n|---|---:|---:|---:|")
    for name, r in (("jaxbatch", jx), ("PyTorch + HF eager", pt)):
        print(f"| {name} | {r['train_s']:.1f} | {r['train_s'] / args.steps:.3f} | {r['dev_entity_f1']:.4f} |")
    print(f"jaxbatch / PyTorch wall time: {res['time_ratio']:.2f}x (goal <= 0.8x); F1 difference "
          f"{res['f1_delta_points']:+.2f} points")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
