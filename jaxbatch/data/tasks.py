"""From `DataConfig` to tokenized train/eval arrays and label names: the one place a run's dataset is chosen."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from jaxbatch.data import synthetic, tokenize

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TaskData:
    name: str
    task: str  # token | sequence
    label_names: list[str]
    train: dict[str, np.ndarray]
    eval: dict[str, np.ndarray]
    tokenizer: object
    truncated: dict[str, int]
    synthetic: bool


def tokenizer_for(model_cfg, vocab: list[str] | None = None):
    """The pretrained model's tokenizer when there is one, else a word-level vocabulary."""
    if model_cfg.pretrained:
        from jaxbatch import hf

        return tokenize.load_tokenizer(hf.resolve(model_cfg.pretrained))
    if vocab is None:
        raise ValueError("a randomly initialised model needs a vocabulary (model.pretrained is empty)")
    return tokenize.load_tokenizer(vocab)


def load(data_cfg, model_cfg) -> TaskData:
    name, seq_len = data_cfg.name, data_cfg.seq_len
    if name == "synthetic_ner":
        tok = tokenizer_for(model_cfg, synthetic.vocabulary())
        label_to_id = {label: i for i, label in enumerate(synthetic.NER_LABELS)}
        splits = {}
        truncated = {}
        for split, n, seed in (("train", data_cfg.num_train, data_cfg.shuffle_seed),
                               ("eval", data_cfg.num_eval, data_cfg.shuffle_seed + 1)):
            corpus = synthetic.ner_corpus(n, seed, held_out=split == "eval")
            enc = tokenize.encode_tagged(tok, [w for w, _ in corpus], [[label_to_id[t] for t in tags]
                                                                       for _, tags in corpus], seq_len)
            splits[split], truncated[split] = enc.arrays, enc.truncated
        return TaskData(name, "token", list(synthetic.NER_LABELS), splits["train"], splits["eval"], tok, truncated,
                        True)
    if name == "synthetic_sst":
        tok = tokenizer_for(model_cfg, synthetic.vocabulary())
        splits, truncated = {}, {}
        for split, n, seed in (("train", data_cfg.num_train, data_cfg.shuffle_seed),
                               ("eval", data_cfg.num_eval, data_cfg.shuffle_seed + 1)):
            corpus = synthetic.sentiment_corpus(n, seed)
            enc = tokenize.encode_labelled(tok, [w for w, _ in corpus], [y for _, y in corpus], seq_len)
            splits[split], truncated[split] = enc.arrays, enc.truncated
        return TaskData(name, "sequence", ["negative", "positive"], splits["train"], splits["eval"], tok, truncated,
                        True)
    from jaxbatch.config import ConfigError

    raise ConfigError(f"data.name={name!r} is unknown; choose synthetic_ner or synthetic_sst")
