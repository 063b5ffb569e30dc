"""Fine-tune pretrained MiniLM-L6 for CoNLL-2003 NER; seqeval entity scores and the token-level report.

    python -m experiments.conll2003_ner --data-dir ../shared/data/conll2003 [--test-split] [key=value ...]

Reads eng.train/eng.testa/eng.testb or train.txt/valid.txt/test.txt (IOB1 or IOB2; converted to IOB2).
"""

import sys

from experiments import finetune
from jaxbatch import cli

DEFAULTS = ["model.preset=minilm-l6", "model.pretrained=minilm-l6", "data.name=conll2003", "data.seq_len=128", "data.buckets=4",
            "train.batch_size=32", "train.steps=1300", "train.eval_every=500", "train.log_every=20",
            "distributed.cpu_one_arena=true", "optim.learning_rate=1e-4", "optim.warmup_steps=100", "train.run_dir=runs/conll2003_ner"]

if __name__ == "__main__":
    sys.exit(cli.reported(finetune.run, "conll2003_ner", DEFAULTS, sys.argv[1:], __doc__))
