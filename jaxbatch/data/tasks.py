"""From `DataConfig` to tokenized train/eval(/test) arrays and label names: the one place a run's dataset is
chosen. Raw examples come from the generated corpus or from tfds (local files or the catalog)."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from jaxbatch.data import synthetic, tokenize
from jaxbatch.data.files import DataError

log = logging.getLogger(__name__)
TOKEN_TASKS = ("synthetic_ner", "conll2003")
SEQUENCE_TASKS = ("synthetic_sst", "sst2")


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
    test: dict[str, np.ndarray] | None = None  # present when the source has a test split
    test_labelled: bool = True


def tokenizer_for(model_cfg, vocab: list[str] | None = None):
    """The pretrained model's tokenizer when there is one, else a word-level vocabulary."""
    if model_cfg.pretrained:
        from jaxbatch import hf

        return tokenize.load_tokenizer(hf.resolve(model_cfg.pretrained))
    if vocab is None:
        raise DataError("a randomly initialised model needs a vocabulary: set model.pretrained to a folder or "
                        "name whose tokenizer to use")
    return tokenize.load_tokenizer(vocab)


def _raw_splits(data_cfg) -> tuple[dict[str, list], bool]:
    """{split: [(words, tags) | (words, label)]} and whether the data is synthetic."""
    name = data_cfg.name
    if name == "synthetic_ner":
        return {"train": synthetic.ner_corpus(data_cfg.num_train, data_cfg.shuffle_seed),
                "validation": synthetic.ner_corpus(data_cfg.num_eval, data_cfg.shuffle_seed + 1, held_out=True)}, True
    if name == "synthetic_sst":
        return {"train": synthetic.sentiment_corpus(data_cfg.num_train, data_cfg.shuffle_seed),
                "validation": synthetic.sentiment_corpus(data_cfg.num_eval, data_cfg.shuffle_seed + 1)}, True
    from jaxbatch.data import tfds_builders

    if data_cfg.data_dir:
        sources = tfds_builders.prepare(name, data_cfg.data_dir, data_cfg.cache_dir or None)
    else:
        sources = tfds_builders.from_catalog({"conll2003": "conll2003", "sst2": "glue/sst2"}[name],
                                             data_cfg.cache_dir or None)
    splits = {}
    for split, source in sources.items():
        records = tfds_builders.read_all(source)
        if name == "conll2003":
            splits[split] = [(r["tokens"], r["tags"]) for r in records]
        else:
            splits[split] = [(r["sentence"].split(), int(r["label"])) for r in records]
    return splits, False


def _tag_ids(split: str, examples, label_to_id: dict[str, int], unknown: str) -> list[list[int]]:
    ids, mapped = [], 0
    for n, (_, tags) in enumerate(examples):
        row = []
        for tag in tags:
            if tag not in label_to_id:
                if unknown != "O":
                    raise DataError(f"{split} split, sentence {n}: tag {tag!r} is not in the label set "
                                    f"{sorted(label_to_id)} (set data.unknown_label=O to map it to O)")
                mapped += 1
                tag = "O"
            row.append(label_to_id[tag])
        ids.append(row)
    if mapped:
        log.warning("%s split: %d tags not in the label set were mapped to O", split, mapped)
    return ids


def load(data_cfg, model_cfg) -> TaskData:
    name = data_cfg.name
    if name not in TOKEN_TASKS + SEQUENCE_TASKS:
        from jaxbatch.config import ConfigError

        raise ConfigError(f"data.name={name!r} is unknown; choose one of {', '.join(TOKEN_TASKS + SEQUENCE_TASKS)}")
    if data_cfg.unknown_label not in ("error", "O"):
        from jaxbatch.config import ConfigError

        raise ConfigError(f"data.unknown_label must be 'error' or 'O', got {data_cfg.unknown_label!r}")
    splits, is_synthetic = _raw_splits(data_cfg)
    if data_cfg.max_train:
        splits["train"] = splits["train"][: data_cfg.max_train]
    for split, examples in splits.items():
        if not examples:
            raise DataError(f"the {split} split of {name} is empty")
    tok = tokenizer_for(model_cfg, synthetic.vocabulary() if is_synthetic else None)
    encoded, truncated = {}, {}
    if name in TOKEN_TASKS:
        if data_cfg.labels:
            label_names = [x.strip() for x in data_cfg.labels.split(",")]
        elif is_synthetic:
            label_names = list(synthetic.NER_LABELS)
        else:
            from jaxbatch.data import conll

            label_names = conll.label_names([conll.Sentence(w, t) for w, t in splits["train"]])
        label_to_id = {n: i for i, n in enumerate(label_names)}
        for split, examples in splits.items():
            tags = _tag_ids(split, examples, label_to_id, "error" if split == "train" else data_cfg.unknown_label)
            enc = tokenize.encode_tagged(tok, [w for w, _ in examples], tags, data_cfg.seq_len,
                                         data_cfg.label_all_subtokens)
            encoded[split], truncated[split] = enc.arrays, enc.truncated
        task, test_labelled = "token", True
    else:
        label_names = ["negative", "positive"]
        for split, examples in splits.items():
            enc = tokenize.encode_labelled(tok, [w for w, _ in examples], [y for _, y in examples], data_cfg.seq_len)
            encoded[split], truncated[split] = enc.arrays, enc.truncated
        task = "sequence"
        test_labelled = "test" in splits and all(y >= 0 for _, y in splits["test"])
        if "test" in encoded and not test_labelled:  # GLUE test labels are hidden: predict, do not score
            encoded["test"]["labels"] = np.full_like(encoded["test"]["labels"], tokenize.IGNORE_INDEX)
    for split, count in truncated.items():
        if count:
            log.warning("%s: %d %s examples are longer than data.seq_len=%d and were truncated", name, count, split,
                        data_cfg.seq_len)
    return TaskData(name, task, label_names, encoded["train"], encoded["validation"], tok, truncated, is_synthetic,
                    encoded.get("test"), test_labelled)
