"""End-to-end time to accuracy, the number users feel: fine-tune pretrained MiniLM-L6 for NER with jaxbatch
(`experiments.conll2003_ner`'s recipe) and with a plain PyTorch + Hugging Face loop, in one run, on the same
tokenized examples with the same hyper-parameters; print each one's wall time to train and dev entity F1. With
`--task qa`, extractive question answering instead (`experiments.squad`'s recipe, `BertForQuestionAnswering`,
both loops' logits turned into answers and scored alike: SQuAD's F1).

    python benchmarks/finetune_e2e.py --data-dir ../shared/data/conll2003            # 1300 steps each
    python benchmarks/finetune_e2e.py --data-dir ../shared/data/conll2003 --seeds 0,1,2   # F1 mean and spread
    python benchmarks/finetune_e2e.py --steps 300 --json e2e.json                     # a shorter run
    python benchmarks/finetune_e2e.py --data synthetic --steps 20 data.seq_len=32     # offline, minutes
    python benchmarks/finetune_e2e.py --steps 300 distributed.cpu_devices=-1          # one XLA:CPU device per core
    python benchmarks/finetune_e2e.py --task qa --data synthetic --steps 150 data.seq_len=128   # offline QA
    python benchmarks/finetune_e2e.py --task qa --data-dir my_squad/ --steps 1000      # SQuAD files

jaxbatch runs with the recipe's own set-up (its DEFAULTS through `experiments/finetune.configure`: on CPU
one device and one malloc arena); the command line's overrides win.

The PyTorch loop is what an HF user writes: `BertForTokenClassification.from_pretrained`, AdamW (no decay
on biases and LayerNorm), linear warmup then linear decay (`get_linear_schedule_with_warmup`), clipping at
1.0, hidden dropout 0.1, and dynamic padding (each batch cut to its longest sequence). Attention-probability
dropout is 0 on both sides (jaxbatch's attention goes through fused kernels, which take none). Both weigh
every labelled token alike: PyTorch's randomly mixed batches divide their summed loss by their own token
count (HF's mean); jaxbatch's length-bucketed batches divide by rows x the split's mean tokens per row
(`train.loss_norm=dataset`, the recipe's default with buckets). "train" is
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

from experiments import conll2003_ner, finetune, squad as squad_recipe  # noqa: E402
from jaxbatch import config, hf, metrics, train  # noqa: E402
from jaxbatch.data import squad  # noqa: E402

# task -> (the recipe's defaults, its generated dataset, the metric compared, its key in an evaluation)
TASKS = {"ner": (conll2003_ner.DEFAULTS, "synthetic_ner", "entity F1", "entity_f1"),
         "qa": (squad_recipe.DEFAULTS, "synthetic_qa", "SQuAD F1", "f1")}


def run_jaxbatch(cfg: config.Config, key: str) -> tuple[dict, object]:
    t0 = time.perf_counter()
    result = train.train(cfg)
    total = time.perf_counter() - t0
    s = result.summary
    return {"train_s": s["setup_s"] - s["data_s"] + s["wall_time_s"] - s["eval_s"], "eval_s": s["eval_s"],
            "total_s": total, "dev_f1": s["final_eval"][key], "steps": s["steps"]}, result.data


def run_torch(data, cfg: config.Config, seed: int = 0) -> dict:
    """The plain PyTorch + HF loop on jaxbatch's tokenized arrays (same examples, same labels; an answer span's
    start and end token as start_positions and end_positions)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.perf_counter()
    qa = data.task == "qa"
    cls = transformers.BertForQuestionAnswering if qa else transformers.BertForTokenClassification
    model = cls.from_pretrained(
        str(hf.resolve(cfg.model.pretrained)), num_labels=len(data.label_names),
        attention_probs_dropout_prob=cfg.model.attention_dropout, hidden_dropout_prob=cfg.model.hidden_dropout)
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
        batch = {k: v[idx] if qa and k == "labels" else v[idx, :length] for k, v in arrays.items()}  # spans: (b, 2)
        if qa:
            labels = batch.pop("labels")
            batch.update(start_positions=labels[:, 0], end_positions=labels[:, 1])
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
            out = model(**{k: v[s: s + 64] for k, v in dev.items()})
            preds.append(np.stack([out.start_logits.numpy(), out.end_logits.numpy()]) if qa else
                         out.logits.argmax(-1).numpy())
    if qa:
        w, (start, end) = data.windows["validation"], np.concatenate(preds, 1)
        found = squad.answers(w, start, end, cfg.data.max_answer_length, cfg.data.unanswerable,
                              cfg.data.null_threshold)
        f1 = metrics.squad_scores([a["answer"] for a in found], [q.answers for q in w.questions])["f1"]
    else:
        gold, pred = metrics.aligned_tags(np.concatenate(preds), data.eval["labels"], data.label_names)
        f1 = metrics.entity_report(gold, pred)["micro avg"]["f1-score"]
    return {"train_s": train_s, "eval_s": time.perf_counter() - t1, "dev_f1": f1, "steps": cfg.train.steps}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=sorted(TASKS), default="ner")
    p.add_argument("--data-dir", default="", help="CoNLL-2003 folder (--task qa: SQuAD files)")
    p.add_argument("--data", choices=["files", "conll2003", "synthetic"], default="files",
                   help="files: --data-dir's; synthetic: the generated corpus (conll2003: files, the old name)")
    p.add_argument("--steps", type=int, default=1300)
    p.add_argument("--seeds", default="0", help="comma-separated; both loops run once per seed (jaxbatch's "
                   "train.seed, PyTorch's init, dropout and order), in turn")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("overrides", nargs="*", help="jaxbatch config overrides (both loops read the optimizer and batch; "
                   "train.seed and train.run_dir are set per seed)")
    args = p.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        p.error(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
    defaults, generated, metric, key = TASKS[args.task]
    data = [f"data.name={generated}"] if args.data == "synthetic" else [f"data.data_dir={args.data_dir}"]
    print(f"| seed | loop | train wall (s) | s / step | dev {metric} |\n|---:|---|---:|---:|---:|", flush=True)
    runs = []
    for seed in seeds:
        cfg = finetune.configure([*defaults, *data, f"train.steps={args.steps}", "train.epochs=0", "train.eval_every=0",
                                  "train.progress=false"],  # each seed trains from scratch in a run dir of its own
                                 [*args.overrides, f"train.seed={seed}", f"train.run_dir={tempfile.mkdtemp(prefix='e2e-')}"])
        jx, task_data = run_jaxbatch(cfg, key)
        pt = run_torch(task_data, cfg, seed)
        runs.append({"seed": seed, "jaxbatch": jx, "torch": pt, "time_ratio": jx["train_s"] / pt["train_s"]})
        for name, r in (("jaxbatch", jx), ("PyTorch + HF eager", pt)):
            print(f"| {seed} | {name} | {r['train_s']:.1f} | {r['train_s'] / args.steps:.3f} | "
                  f"{r['dev_f1']:.4f} |", flush=True)
    res = {**summary(runs), "runs": runs, "task": args.task, "metric": metric, "steps": args.steps,
           "batch": cfg.train.batch_size, "seq_len": cfg.data.seq_len, "buckets": cfg.data.buckets}
    f1 = {k: f"{res[k]['f1_mean']:.4f}" + (f" +- {res[k]['f1_std']:.4f} (sd)" if len(runs) > 1 else "")
          for k in ("jaxbatch", "torch")}
    print(f"jaxbatch / PyTorch wall time: {res['time_ratio']:.2f}x (median over seeds; goal <= 0.8x)\n"
          f"dev {metric} over {len(runs)} seed(s): jaxbatch {f1['jaxbatch']}, PyTorch {f1['torch']}; "
          f"difference of means {res['f1_delta_points']:+.2f} points"
          + (f" (standard error {res['f1_delta_se_points']:.2f})" if len(runs) > 1 else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return res


def summary(runs: list[dict]) -> dict:
    """Per loop: median train time and F1 mean / sample sd over seeds; the median time ratio; the F1
    difference of means in points and its standard error (unpaired: the loops' seeds are unrelated)."""
    out = {"time_ratio": float(np.median([r["time_ratio"] for r in runs]))}
    for k in ("jaxbatch", "torch"):
        f1 = np.array([r[k]["dev_f1"] for r in runs])
        out[k] = {"train_s_median": float(np.median([r[k]["train_s"] for r in runs])), "f1_mean": float(f1.mean()),
                  "f1_std": float(f1.std(ddof=1)) if len(f1) > 1 else 0.0}
    out["f1_delta_points"] = 100 * (out["jaxbatch"]["f1_mean"] - out["torch"]["f1_mean"])
    out["f1_delta_se_points"] = 100 * float(np.sqrt((out["jaxbatch"]["f1_std"] ** 2 + out["torch"]["f1_std"] ** 2)
                                                    / len(runs)))
    return out


if __name__ == "__main__":
    main()
