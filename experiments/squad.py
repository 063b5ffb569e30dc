"""Fine-tune pretrained MiniLM-L6 for extractive question answering on SQuAD; dev exact match and F1.

    python -m experiments.squad --data-dir my_squad/ [--test-split] [key=value ...]

The folder holds SQuAD's `train-v1.1.json` and `dev-v1.1.json` (or the hub's `train`/`validation` JSON lines or
Parquet); for SQuAD 2.0 add data.unanswerable=true. Hugging Face run_qa.py's windows (384 tokens, stride 128) and
answer length (30 tokens); a test split without answers gets test_predictions.json instead of scores.
"""

import sys

from experiments import finetune
from jaxbatch import cli

DEFAULTS = ["model.preset=minilm-l6", "model.pretrained=minilm-l6", "data.name=squad", "data.seq_len=384",
            "data.doc_stride=128", "data.buckets=3", "train.batch_size=32", "train.epochs=2", "train.eval_every=2000",
            "train.log_every=20", "distributed.cpu_one_arena=true", "optim.learning_rate=5e-5",
            "optim.warmup_steps=300", "checkpoint.best_metric=f1", "train.run_dir=runs/squad"]

if __name__ == "__main__":
    sys.exit(cli.reported(finetune.run, "squad", DEFAULTS, sys.argv[1:], __doc__))
