"""Fine-tune pretrained MiniLM-L6 on GLUE SST-2 (binary sentiment); dev accuracy.

    python -m experiments.sst2 --data-dir ../shared/data/sst2 [--test-split] [key=value ...]

The GLUE test split has no labels: --test-split writes test_predictions.tsv instead of scoring it.
"""

import sys

from experiments import finetune
from jaxbatch import cli

DEFAULTS = ["model.preset=minilm-l6", "model.pretrained=minilm-l6", "data.name=sst2", "data.seq_len=64", "data.buckets=3",
            "train.batch_size=32", "train.steps=2000", "train.eval_every=500", "train.log_every=20",
            "distributed.cpu_one_arena=true", "optim.learning_rate=5e-5", "optim.warmup_steps=100", "train.run_dir=runs/sst2"]

if __name__ == "__main__":
    sys.exit(cli.reported(finetune.run, "sst2", DEFAULTS, sys.argv[1:], __doc__))
