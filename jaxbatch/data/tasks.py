"""From `DataConfig` to tokenized train/eval(/test) arrays and label names: the one place a run's dataset is
chosen. Raw examples come from the generated corpus or from tfds (local files or the catalog).

Datasets are kinds of files, not names: `conll` reads any CoNLL-format tag set (prefixes of any type: IOB1,
IOB2, IOBES or BILOU, or plain tags such as part of speech; CoNLL columns, CoNLL-U, or JSON lines and Parquet
with tags as names or class ids), `tsv` (or `csv`, `jsonl`: the same reader) any N-class text-classification
file (TSV, CSV, JSON lines or Parquet; one class per text, several, or a score), `text` any plain-text corpus
for language modelling (documents packed into rows; data/packing.py), `squad` any SQuAD-style question answering
file (1.1 or 2.0; data/squad.py). `conll2003` and `sst2` are presets of
them (with the TFDS catalog as a source when no `data.data_dir` is given, conll2003's tag id order and SST-2's
class names).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import logging
from collections.abc import Sequence

import numpy as np

from jaxbatch import losses
from jaxbatch.data import (conll, files, masking, packing, pipeline, squad, synthetic, text, token_cache, tokenize,
                           tsv)
from jaxbatch.errors import ConfigError, DataError, MissingSplit
from jaxbatch.losses import FLOAT_HEADS, IGNORE_INDEX, MULTI_LABEL, REGRESSION

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Dataset:
    source: str  # conll | tsv | text | squad | synthetic_ner | synthetic_sst | synthetic_qa
    task: str  # token | sequence | lm | qa
    labels: tuple[str, ...] = ()  # the label set when neither data.labels nor the files say otherwise
    catalog: str = ""  # TFDS catalog name, used when data.data_dir is empty
    tag_ids: tuple[str, ...] = ()  # the names of its class-id tags (JSON files), in id order: fixed by the dataset


DATASETS = {
    "conll": Dataset("conll", "token"),
    "conll2003": Dataset("conll", "token", catalog="conll2003", tag_ids=conll.CONLL2003_IDS),
    "tsv": Dataset("tsv", "sequence"),  # reads train.tsv, train.csv or train.jsonl (data/tsv.py)
    "csv": Dataset("tsv", "sequence"),
    "jsonl": Dataset("tsv", "sequence"),
    "sst2": Dataset("tsv", "sequence", labels=("negative", "positive"), catalog="glue/sst2"),
    "text": Dataset("text", "lm"),
    "tiny_shakespeare": Dataset("text", "lm", catalog="tiny_shakespeare"),
    "lm1b": Dataset("text", "lm", catalog="lm1b"),
    "squad": Dataset("squad", "qa"),
    "synthetic_ner": Dataset("synthetic_ner", "token", labels=synthetic.NER_LABELS),
    "synthetic_sst": Dataset("synthetic_sst", "sequence", labels=("negative", "positive")),
    "synthetic_qa": Dataset("synthetic_qa", "qa"),
}


@dataclasses.dataclass
class TaskData:
    name: str
    task: str  # token | sequence | lm | qa
    label_names: list[str]  # empty for language modelling; start, end for question answering
    train: dict[str, np.ndarray]
    eval: dict[str, np.ndarray]
    truncated: dict[str, int]
    synthetic: bool
    tokenizer: object
    test: dict[str, np.ndarray] | None = None  # present when the source has a test split
    test_labelled: bool = True
    bytes_per_token: np.ndarray | None = None  # language modelling: UTF-8 bytes of each token id (bits per byte)
    problem_type: str = ""  # a sequence head's: "" (one class), regression or multi_label_classification
    masking: masking.Masking | None = None  # masked language modelling: how each training batch is masked
    windows: dict = dataclasses.field(default_factory=dict)  # question answering: {split: squad.Windows}


def _known(data_cfg) -> Dataset:
    """A name from DATASETS, or `tfds:NAME` for any TFDS catalog dataset with a `text` feature (an LM corpus)."""
    if data_cfg.name.startswith("tfds:") and len(data_cfg.name) > 5:
        return Dataset("text", "lm", catalog=data_cfg.name[5:])
    if data_cfg.name not in DATASETS:
        raise ConfigError(f"data.name={data_cfg.name!r} is unknown; choose one of {', '.join(DATASETS)} or "
                          f"tfds:NAME (a TFDS catalog text corpus)")
    return DATASETS[data_cfg.name]


def dataset(data_cfg) -> Dataset:
    """The dataset `data_cfg` names, with the settings reading it needs checked."""
    ds = _known(data_cfg)
    if data_cfg.unknown_label not in ("error", "O"):
        raise ConfigError(f"data.unknown_label must be 'error' or 'O', got {data_cfg.unknown_label!r}")
    if ds.source in ("conll", "tsv", "text", "squad") and not data_cfg.data_dir and not ds.catalog:
        raise ConfigError(f"data.name={data_cfg.name} reads your files: set data.data_dir to their folder")
    return ds


def dataset_task(data_cfg) -> str:
    """The task a dataset trains (token | sequence | lm | qa), known without reading it."""
    return _known(data_cfg).task


@dataclasses.dataclass(frozen=True)
class Raw:
    """One split's examples as read: words, tags or the label as written, and each one's file line, so an
    error names `file:line` (`place` is the file, or what stands for it when the examples have no lines)."""
    place: str
    words: list[list[str]]
    labels: list  # per example: its tags (token tasks) or its label as written ("" unlabelled; a list of classes)
    lines: list[int]  # 0: not from a file
    pairs: list[list[str]] = dataclasses.field(default_factory=list)  # a text pair's second words; [] = single
    word_lines: bool = True  # an example's k-th word is on its line + k (CoNLL columns; not JSON lines, CoNLL-U)
    class_names: tuple[str, ...] = ()  # the file's own names of its label ids, in id order (a hub Parquet file's)

    def at(self, n: int, offset: int = 0) -> str:
        """Where example n (and its word `offset`, when `word_lines`; else the example's first line) is, for a
        message."""
        if not self.lines[n]:
            return f"{self.place}, example {n}"
        return files.place(self.place, self.lines[n] + (offset if self.word_lines else 0))

    def head(self, n: int) -> "Raw":
        return dataclasses.replace(self, words=self.words[:n], labels=self.labels[:n], lines=self.lines[:n],
                                   pairs=self.pairs[:n])


def _generated(split: str, rows) -> Raw:
    return Raw(f"the generated {split} split", [w for w, _ in rows], [y for _, y in rows], [0] * len(rows))


def _raw_splits(data_cfg, ds: Dataset, required: tuple[str, ...] = ("train", "validation")) -> dict[str, Raw]:
    if ds.source == "synthetic_ner":
        return {"train": _generated("train", synthetic.ner_corpus(data_cfg.num_train, data_cfg.shuffle_seed)),
                "validation": _generated("validation", synthetic.ner_corpus(
                    data_cfg.num_eval, data_cfg.shuffle_seed + 1, held_out=True))}
    if ds.source == "synthetic_sst":
        named = lambda rows: [(w, ds.labels[y]) for w, y in rows]  # noqa: E731
        return {"train": _generated("train", named(synthetic.sentiment_corpus(data_cfg.num_train,
                                                                               data_cfg.shuffle_seed))),
                "validation": _generated("validation", named(synthetic.sentiment_corpus(
                    data_cfg.num_eval, data_cfg.shuffle_seed + 1)))}
    from jaxbatch.data import tfds_builders

    if data_cfg.data_dir:
        paths = tfds_builders.files(ds.source, data_cfg.data_dir, required)
        places = {split: str(path) for split, path in paths.items()}
        sources = tfds_builders.build(ds.source, paths, data_cfg.cache_dir or None)
    else:
        sources = tfds_builders.from_catalog(ds.catalog, data_cfg.cache_dir or None, required)
        places = {split: f"tfds {ds.catalog} {split} split" for split in sources}
    splits = {}
    for split, source in sources.items():
        records = tfds_builders.read_all(source)
        lines = [int(r.get("line", 0)) for r in records]
        if ds.source == "conll" and data_cfg.data_dir:
            raw = Raw(places[split], [r["tokens"] for r in records], [r["tags"] for r in records], lines,
                      word_lines=conll.lines_per_word(paths[split]),
                      class_names=tuple(files.label_classes(paths[split], conll.TAG_KEYS)))
            splits[split] = _named_tags(data_cfg, ds, raw)
        elif ds.source == "conll":  # the catalog's conll2003 stores its NER tags as ids of a ClassLabel
            splits[split] = Raw(places[split], [r["tokens"] for r in records],
                                tfds_builders.class_names(source, records, "ner"), lines)
        else:  # the catalog's SST-2 stores int labels (-1 for its hidden test labels) and no pairs
            pairs = [r.get("sentence_pair", "").split() for r in records]
            labels = [list(r["labels"]) if r.get("listed") else "" if str(r["label"]) == "-1" else str(r["label"])
                      for r in records]
            classes = files.label_classes(paths[split], tsv.LABEL_COLUMNS) if data_cfg.data_dir else []
            splits[split] = Raw(places[split], [r["sentence"].split() for r in records], labels, lines,
                                pairs if any(pairs) else [], class_names=tuple(classes))
    if len({bool(raw.pairs) for raw in splits.values()}) > 1:
        paired = sorted(split for split, raw in splits.items() if raw.pairs)
        raise DataError(f"{data_cfg.name}: the {', '.join(paired)} split(s) hold text pairs and the others single "
                        f"texts ({', '.join(places.values())}); a model reads one or the other")
    return splits


def _listed_labels(data_cfg) -> list[str]:
    """data.labels as a list ([] when empty)."""
    if not data_cfg.labels:
        return []
    names = [x.strip() for x in data_cfg.labels.split(",")]
    if len(set(names)) != len(names) or not all(names):
        raise ConfigError(f"data.labels={data_cfg.labels!r} has empty or repeated names")
    return names


def _named_tags(data_cfg, ds: Dataset, raw: Raw) -> Raw:
    """A split whose tags are class ids (a JSON file, as `datasets` writes conll2003) with the tags named by the
    dataset's own id order, or else by data.labels (a run's label set keeps their ids: _label_names), then as
    tags read by name are (conll.in_scheme: entity tags in IOB2, plain tags as they are)."""
    if not (raw.labels and all(conll.is_ids(tags) for tags in raw.labels)):
        return raw
    names = list(ds.tag_ids) or _listed_labels(data_cfg)
    if not names:
        raise ConfigError(f"{raw.at(0)}: the tags are class ids; set data.labels to their names in id order (for "
                          f"`datasets`' conll2003: data.labels={','.join(conll.CONLL2003_IDS)})")
    tags, entities = [], conll.is_entity_scheme(names)
    for n, ids in enumerate(raw.labels):
        unnamed = next((i for i in ids if int(i) >= len(names)), None)
        if unnamed is not None:
            raise DataError(f"{raw.at(n)}: tag id {unnamed} has no name: data.labels names ids 0 to {len(names) - 1}")
        tags.append(conll.in_scheme([names[int(i)] for i in ids], entities, lambda k, n=n: raw.at(n)))
    return dataclasses.replace(raw, labels=tags)


def _label_names(data_cfg, ds: Dataset, train: Raw, problem: str = "") -> list[str]:
    """data.labels, or the training file's own class names (in id order, as `datasets` lists them), or the
    preset's, or what the training labels name."""
    names, where = _listed_labels(data_cfg), f"data.labels={data_cfg.labels!r}"
    if not names and train.class_names:
        names, where = list(train.class_names), f"{train.place}'s class names"
    if names and ds.task == "token" and conll.is_entity_scheme(names):  # entity tags are read in IOB2: IOBES names
        return list(dict.fromkeys(names + [conll.iob_tag(n, where) for n in names]))  # gain their IOB2 after them
    if names:
        return names
    if ds.labels:
        return list(ds.labels)
    if ds.task == "token" or problem != MULTI_LABEL:
        names = (conll.label_names([conll.Sentence(w, t) for w, t in zip(train.words, train.labels)])
                 if ds.task == "token" else tsv.label_names(train.labels))
        if len(names) < 2:  # one class: nothing to tell apart, and a one-logit head is a yes/no question
            what = "tag" if ds.task == "token" else "label"
            raise DataError(f"{train.place}: every training example has the one {what} {names[0]!r}; a classifier "
                            f"needs two or more (set data.labels to the full class list if the others are only "
                            f"absent here)")
        return names
    names = tsv.label_names([c for y in train.labels for c in _classes(y)])
    if not names:
        raise DataError(f"{train.place}: no training example names a class (every label list is empty)")
    return names


def _tag_ids(split: str, raw: Raw, label_to_id: dict[str, int], unknown: str) -> list[list[int]]:
    ids, mapped = [], 0
    for n, tags in enumerate(raw.labels):
        row = []
        for k, tag in enumerate(tags):
            if tag not in label_to_id:
                if unknown != "O" or "O" not in label_to_id:
                    hint = " (set data.unknown_label=O to map it to O)" if "O" in label_to_id else ""
                    raise DataError(f"{raw.at(n, k)}: tag {tag!r} is not in the label set {sorted(label_to_id)}{hint}")
                mapped += 1
                tag = "O"
            row.append(label_to_id[tag])
        ids.append(row)
    if mapped:
        log.warning("%s split: %d tags not in the label set were mapped to O", split, mapped)
    return ids


def _looks_like_scores(labels: list[str]) -> bool:
    """HF's run_glue makes a float label column a regression: every label a number, some not whole-looking."""
    given = [y for y in labels if y != ""]
    try:
        numbers = [float(y) for y in given]
    except ValueError:
        return False
    return bool(numbers) and all(np.isfinite(numbers)) and any(not y.lstrip("+-").isdigit() for y in given)


def problem(data_cfg, problem_type: str, train: Raw) -> str:
    """A sequence task's head: model.problem_type when it is set, "" for classification; or else what the
    training labels are, as HF's run_classification reads them: lists of classes (JSON lines) make a
    multi-label head, lists of scores (numbers, some not whole-looking) a regression with that many outputs,
    scores a regression (never with a class list: data.labels or the dataset's own)."""
    listed = next((n for n, y in enumerate(train.labels) if isinstance(y, list)), None)
    if problem_type:
        head = problem_type if problem_type in FLOAT_HEADS else ""
        if listed is not None and not head:
            raise DataError(f"{train.at(listed)}: label {train.labels[listed]} is a list, which a multi-label head "
                            f"(model.problem_type={MULTI_LABEL}) or a regression with several outputs "
                            f"(model.problem_type={REGRESSION}) reads, not one that picks one class")
        return head
    if listed is not None:
        lists = [y for y in train.labels if isinstance(y, list)]
        return REGRESSION if _looks_like_scores([v for y in lists for v in y]) else MULTI_LABEL
    if data_cfg.labels or _known(data_cfg).labels:
        return ""
    return REGRESSION if _looks_like_scores(train.labels) else ""


def _classes(label) -> list[str]:
    """A multi-label example's classes: its list, or its label as written with classes comma-separated."""
    return label if isinstance(label, list) else [c.strip() for c in label.split(",") if c.strip()]


def _class_id(label: str, index: dict[str, int]) -> int | None:
    """A class written as its name or as an integer id into the label set; None if it is neither."""
    if label in index:
        return index[label]
    return int(label) if label.isdigit() and int(label) < len(index) else None


def _outputs(data_cfg, ds: Dataset, train: Raw) -> list[str]:
    """A regression head's output names: data.labels, or 0..K-1 when its first labelled training example
    lists K > 1 scores; [] for one score (HF's LABEL_0). `_scores` holds every example to that width."""
    width = len(_score_list(train.labels[next((n for n, y in enumerate(train.labels) if y != ""), 0)]))
    names = _label_names(data_cfg, ds, train) if data_cfg.labels else []
    return names or ([str(k) for k in range(width)] if width > 1 else [])


def _score_list(label) -> list:
    return label if isinstance(label, list) else [label]


def _scores(raw: Raw, width: int = 1) -> np.ndarray:
    """Regression targets as float32, (examples,) for one output and (examples, width) for several (a list
    of scores each); "" (unlabelled) is NaN."""
    out = np.full((len(raw.labels), width), np.nan, np.float32)
    for n, label in enumerate(raw.labels):
        if label == "":
            continue
        scores = _score_list(label)
        if len(scores) != width:
            raise DataError(f"{raw.at(n)}: label {label!r} gives {len(scores)} score(s); the regression head has "
                            f"{width} output(s), as the first labelled training example says (or data.labels)")
        for k, score in enumerate(scores):
            try:
                value = float(score)
            except ValueError:
                value = np.nan
            if not np.isfinite(value):
                raise DataError(f"{raw.at(n)}: label {label!r} is not a finite number (a regression head reads "
                                f"scores; model.problem_type=classification reads class names)")
            out[n, k] = value
    return out[:, 0] if width == 1 else out


def _class_ids(raw: Raw, names: list[str]) -> list[int]:
    """A label as written is a class name or an integer id into the label set; "" is unlabelled."""
    index = {n: i for i, n in enumerate(names)}
    ids = []
    for n, label in enumerate(raw.labels):
        if isinstance(label, list):
            raise DataError(f"{raw.at(n)}: label {label} is a list of classes, which a multi-label head reads "
                            f"(model.problem_type={MULTI_LABEL}), not one that picks one class")
        i = IGNORE_INDEX if label == "" else _class_id(label, index)
        if i is None:
            hint = " or model.problem_type=regression for scores" if _looks_like_scores([label]) else ""
            raise DataError(f"{raw.at(n)}: label {label!r} is neither one of {names} nor an id below {len(names)} "
                            f"(set data.labels to the full class list{hint})")
        ids.append(i)
    return ids


def _indicators(raw: Raw, names: list[str]) -> np.ndarray:
    """Multi-label targets: per example a 0/1 float32 per class (what binary cross-entropy takes), 1 for each
    class its label names (_classes: by name or integer id); "" (unlabelled) is a row of NaN."""
    index = {n: i for i, n in enumerate(names)}
    out = np.zeros((len(raw.labels), len(names)), np.float32)
    for n, label in enumerate(raw.labels):
        if label == "":
            out[n] = np.nan
        for c in _classes(label):
            i = _class_id(c, index)
            if i is None:
                raise DataError(f"{raw.at(n)}: class {c!r} is neither one of {names} nor an id below {len(names)} "
                                f"(set data.labels to the full class list)")
            out[n, i] = 1.0
    return out


def _encode(data_cfg, ds: Dataset, tokenizer, split: str, raw: Raw, label_names: list[str],
            problem_type: str = "") -> tokenize.Encoded:
    """One split's examples -> arrays (a sequence task's labels as `problem_type` reads them: class ids, scores
    or per-class indicators); an empty split is an error, truncation is reported."""
    if not raw.words:
        raise DataError(f"the {split} split of {data_cfg.name} is empty")
    if isinstance(tokenizer, text.CharTokenizer):
        raise ConfigError(f"data.name={data_cfg.name} is a {ds.task} task, which reads words through a Hugging Face "
                          f"tokenizer; a character vocabulary reads text corpora only: set data.tokenizer (or "
                          f"model.pretrained) to a folder or name whose tokenizer to use")
    if ds.task == "token":
        label_to_id = {n: i for i, n in enumerate(label_names)}
        tags = _tag_ids(split, raw, label_to_id, "error" if split == "train" else data_cfg.unknown_label)
        enc = tokenize.encode_tagged(tokenizer, raw.words, tags, data_cfg.seq_len, data_cfg.label_all_subtokens)
    else:
        read = {REGRESSION: lambda raw: _scores(raw, max(len(label_names), 1)),
                MULTI_LABEL: lambda raw: _indicators(raw, label_names)}.get(
            problem_type, lambda raw: np.asarray(_class_ids(raw, label_names), np.int32))
        ids = read(raw)
        missing = np.flatnonzero(~losses.labelled(ids).reshape(len(ids), -1).all(1))
        if split != "test" and len(missing):
            raise DataError(f"{raw.at(int(missing[0]))}: no label (a {split} file needs a label column; "
                            f"only a test split may be unlabelled)")
        enc = tokenize.encode_labelled(tokenizer, raw.words, ids, data_cfg.seq_len, raw.pairs)
    if enc.truncated:
        log.warning("%s: %d %s examples are longer than data.seq_len=%d and were truncated", data_cfg.name,
                    enc.truncated, split, data_cfg.seq_len)
    return enc


class _Corpus:
    """One split of a text corpus: its data source and limits, which name its tokenized rows in the token cache,
    and its (prompt, text) documents, read on first use only (a cached split is never read)."""

    def __init__(self, name: str, source, read: int | None, keep: int):
        self.name, self.source, self.read, self.keep = name, source, read, keep

    def key(self) -> list | None:
        """The prepared data's name (a local build's holds its files' content hash), split and limits; None for a
        source that names no prepared data (its rows are not cached)."""
        info = getattr(self.source, "dataset_info", None)
        return [info.full_name, self.source.split, self.read, self.keep] if info is not None else None

    @functools.cached_property
    def docs(self) -> list[text.Doc]:
        return [doc for _, doc in sorted((pair for chunk in self.chunks() for pair in chunk), key=lambda p: p[0])]

    def chunks(self):
        """(place in the file, document) pairs, a chunk of records at a time as they are stored (a local build's
        are shuffled), so rows can be built without every document's text in memory at once (its Python objects
        took ~13 bytes a token); the documents already read, when they were."""
        from jaxbatch.data import tfds_builders

        if "docs" in self.__dict__:
            yield list(enumerate(self.docs))
            return
        place = 0
        for records in tfds_builders.read_chunks(self.source, self.read):
            if records and "text" not in records[0]:
                raise DataError(f"data.name={self.name}: records have no 'text' feature (they have "
                                f"{sorted(records[0])})")
            chunk = []
            for r in records:  # catalog corpora have no prompts and no index: their order is the file's
                order, place = r.get("index", place), place + 1
                if not self.keep or order < self.keep:
                    chunk.append((order, (json.loads(r["prompt"]) if r.get("chat") else r.get("prompt", ""),
                                          r["text"])))
            yield chunk


def _lm_corpora(data_cfg, required: tuple[str, ...] = ("train", "validation"), max_eval: int = 0) -> dict[str, _Corpus]:
    """{split: corpus}: local text files (split by data/text.py), or a TFDS catalog corpus (one record per
    document; its test split stands in for a missing validation split, as for lm1b). Only the first
    data.max_train training documents and `max_eval` validation documents (0: all) are used."""
    from jaxbatch.data import tfds_builders

    limit = {}
    if data_cfg.data_dir:
        sources = tfds_builders.prepare("text", data_cfg.data_dir, data_cfg.cache_dir or None, required)
        missing = [split for split in required if split not in sources]
        if missing:
            raise MissingSplit(f"data.name={data_cfg.name} has no {missing[0]} split in {data_cfg.data_dir}: a "
                               f"corpus is split into train and validation, or by its files' names (train, validation "
                               f"or valid or dev, test or eval)", missing[0])
    else:
        ds = _known(data_cfg)
        sources = tfds_builders.from_catalog(ds.catalog, data_cfg.cache_dir or None, required)
        limit = {"train": data_cfg.max_train or None,  # lm1b's 30M sentences: read only what is used
                 "validation": max_eval or None}
    keep = {"train": data_cfg.max_train, "validation": max_eval}
    # a test file's characters are no part of a character vocabulary
    return {split: _Corpus(data_cfg.name, sources[split], limit.get(split), keep.get(split, 0)) for split in required}


def _lm_encode(tokenizer):
    """(prompt, text) -> (token ids, which of them are targets, how many of a chat's assistant turns could
    only be read). The text is ended by a blank line (characters) or EOS; a sub-word prompt and text are
    encoded apart (the prompt with the tokenizer's special tokens, e.g. BOS), so the boundary falls where
    generation starts from the prompt alone. A chat is rendered by the tokenizer's chat template, which
    brings its own special tokens and ends each turn; every assistant turn is a target (_chat_pieces)."""
    if isinstance(tokenizer, text.CharTokenizer):
        def by_character(prompt, doc):
            if isinstance(prompt, list):
                raise DataError(CHAT_NEEDS)
            ids = tokenizer.encode(prompt + doc + "\n\n")
            return ids, [j >= len(prompt) for j in range(len(ids))], 0

        return by_character
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    def encode(prompt, doc, doc_ids=None):
        """`doc_ids`: the text already encoded (`_encoded` encodes a chunk of texts at once)."""
        if isinstance(prompt, list):
            pieces, context_turns = _chat_pieces(tokenizer, prompt, doc)
            ids, trained = [], []
            for piece, target in pieces:
                piece_ids = list(tokenizer.encode(piece, add_special_tokens=False))
                ids += piece_ids
                trained += [target] * len(piece_ids)
            return ids, trained, context_turns
        lead = list(tokenizer.encode(prompt)) if prompt else []
        if doc_ids is None:
            doc_ids = tokenizer.encode(doc, add_special_tokens=not prompt)
        ids = lead + list(doc_ids) + eos
        return ids, [False] * len(lead) + [True] * (len(ids) - len(lead)), 0

    return encode


CHAT_NEEDS = ("chat examples ({\"messages\": ...}) need a tokenizer with a chat template (a Hugging Face folder's "
              "tokenizer_config.json or chat_template.jinja: model.pretrained or data.tokenizer)")


def _chat_pieces(tokenizer, history: list[dict], answer: str) -> tuple[list[tuple[str, bool]], int]:
    """A conversation as the chat template renders it, cut into (text, trained) pieces: each assistant turn
    (from where the template's generation prompt ends to the end of its turn) is trained, the rest is read.
    An earlier assistant turn is cut the same way when the template renders the conversation up to it as
    the start of the whole; a template that rewrites earlier turns (Qwen3's drops their reasoning) leaves
    such a turn as context, counted in the second value. The last answer is always trained."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(CHAT_NEEDS)
    messages = history + [{"role": "assistant", "content": answer}]

    def render(upto: int, prompt: bool = False) -> str:
        return tokenizer.apply_chat_template(messages[:upto], add_generation_prompt=prompt, tokenize=False)

    try:  # templates raise on conversations they do not take (roles out of turn, a system message, ...)
        whole, last = render(len(messages)), render(len(history), prompt=True)
    except Exception as e:  # noqa: BLE001  jinja2's TemplateError and whatever a template raises
        raise DataError(f"the tokenizer's chat template refused a conversation ({type(e).__name__}: {e}); roles "
                        f"{[m['role'] for m in messages]}") from e
    if not whole.startswith(last):
        raise DataError("the tokenizer's chat template does not render a conversation as its history followed by "
                        "the answer, so the answer cannot be told apart for training")
    pieces, done, context_turns = [], 0, 0
    for i in [i for i, m in enumerate(history) if m["role"] == "assistant" and i > 0]:
        try:
            lead, upto = render(i, prompt=True), render(i + 1)
        except Exception:  # noqa: BLE001  a template may refuse a conversation cut short; the turn is still read
            lead = upto = None
        cut = lead is not None and done <= len(lead) <= len(upto) <= len(last)
        if not (cut and upto.startswith(lead) and whole.startswith(upto)):
            context_turns += 1
            continue
        pieces += [(whole[done:len(lead)], False), (whole[len(lead):len(upto)], True)]
        done = len(upto)
    return pieces + [(whole[done:len(last)], False), (whole[len(last):], True)], context_turns


def _encoded(docs: list[text.Doc], tokenizer, chunk: int = 1000):
    """`_lm_encode` of each document, the texts of a sub-word tokenizer's `chunk` documents encoded in one call
    (the tokenizer's batch encoding, in parallel: 195k documents 13.8 s -> 9.4-11.4 s on 2 cores)."""
    encode = _lm_encode(tokenizer)
    if isinstance(tokenizer, text.CharTokenizer):
        yield from (encode(p, d) for p, d in docs)
        return
    for start in range(0, len(docs), chunk):
        part, texts = docs[start: start + chunk], {}
        for special in (True, False):  # a text after a prompt is encoded without the special tokens
            which = [i for i, (p, _) in enumerate(part) if not isinstance(p, list) and bool(p) != special]
            if which:
                ids = tokenizer([part[i][1] for i in which], add_special_tokens=special, return_attention_mask=False,
                                return_token_type_ids=False)["input_ids"]
                texts.update(zip(which, ids))
        yield from (encode(p, d, texts.get(i)) for i, (p, d) in enumerate(part))


def _ids_dtype(tokenizer):
    """2 bytes a token while the vocabulary's ids fit in 16 bits."""
    return np.uint16 if len(tokenizer) <= 1 << 16 else np.int32


def _in_order(chunks, dtype, files=None) -> tuple["_InOrder", "_InOrder | None"]:
    """The documents of `chunks` (each an iterable of (place, ids, marks): marks a 0/1 per token, None for all 1)
    and their marks (None when every one is 1), read back in their places' order (documents of equal place in
    the order they came). Each chunk's documents are kept in one array (2 bytes a token; a document an array of
    its own took ~270 bytes of Python objects more), converted as they come (materialising a chunk's Python lists
    first cost ~14% in GC), and, building a token cache entry (`files`), written to its scratch files as they
    come: only a chunk is in memory, whatever the corpus' size."""
    ids = _Pieces(dtype, files.scratch("ids") if files else None)
    marks = _Pieces(bool, files.scratch("marks") if files else None)
    places, lengths = [], []
    for chunk in chunks:
        doc_ids, doc_marks, doc_places = [], [], []
        for place, doc, mark in chunk:
            doc_ids.append(np.asarray(doc, dtype))
            doc_marks.append(None if mark is None else np.asarray(mark, bool))
            doc_places.append(place)
        ids.add(np.concatenate(doc_ids or [np.zeros(0, dtype)]))
        marks.add(None if all(m is None or m.all() for m in doc_marks) else np.concatenate(
            [np.ones(len(d), bool) if m is None else m for d, m in zip(doc_ids, doc_marks)]))
        places.append(np.asarray(doc_places, np.int64))
        lengths.append(np.asarray([len(doc) for doc in doc_ids], np.int64))
    documents, marks = _InOrder(ids.pieces(), lengths, places), marks.pieces()
    return documents, None if all(m is None for m in marks) else documents.over(marks)


class _Pieces:
    """Arrays (or None) kept in the order they are added: in memory, or appended to one file (`path`) and read back
    as views of its one memory map (one mapping: a map per piece would hold a file descriptor each)."""

    def __init__(self, dtype, path=None):
        self.dtype, self.path, self.kept, self.at = np.dtype(dtype), path, [], 0
        self.file = open(path, "wb") if path else None

    def add(self, piece: np.ndarray | None) -> None:
        if piece is None or self.file is None:
            self.kept.append(piece)
            return
        piece.astype(self.dtype, copy=False).tofile(self.file)
        self.kept.append((self.at, len(piece)))
        self.at += len(piece)

    def pieces(self) -> list:
        if self.file is None:
            return self.kept
        self.file.close()
        # an ndarray over the map (slicing a memmap costs a Python call a document more)
        whole = np.memmap(self.path, self.dtype, "r").view(np.ndarray) if self.at else np.zeros(0, self.dtype)
        return [p if p is None else whole[p[0]: p[0] + p[1]] for p in self.kept]


def _pack(chunks, tokenizer, files=None) -> dict[str, np.ndarray]:
    """The documents (`chunks` of (place, document) pairs: _Corpus.chunks) end to end in their places' order, as
    packed rows are read from them (into a token cache entry's `files`: packing.stream), and `context_turns`: how
    many of their chats' assistant turns are only read. Each chunk's text is dropped once encoded."""
    context_turns = 0

    def encoded(chunk):
        nonlocal context_turns
        for (place, _), (doc, trained, turns) in zip(chunk, _encoded([doc for _, doc in chunk], tokenizer)):
            context_turns += turns
            yield place, doc, trained

    dtype = _ids_dtype(tokenizer)
    documents, trained = _in_order(map(encoded, chunks), dtype, files)
    return {**packing.stream(documents, trained, alloc=files, dtype=dtype), "context_turns": np.asarray(context_turns)}


class _InOrder(Sequence):
    """Documents held a chunk to an array (`pieces`, each its chunk's documents end to end, or None), read one at
    a time in the order of their places (`lengths`, `places`: per chunk, per document). 16 bytes a document: which
    comes when, and where each begins among all of them as they came."""

    def __init__(self, pieces: list, lengths: list[np.ndarray], places: list[np.ndarray]):
        none = [np.zeros(0, np.int64)]
        self.pieces = pieces
        self.first_doc = np.cumsum([0, *(len(k) for k in lengths)])  # each chunk's first document, as they came
        self.offsets = np.concatenate([[0], np.cumsum(np.concatenate(lengths or none))])  # each document's start
        self.first_token = self.offsets[self.first_doc[:-1]]  # each chunk's first token
        self.order = np.argsort(np.concatenate(places or none), kind="stable")

    def over(self, pieces: list) -> "_InOrder":
        """The same documents in the same order over other pieces (their marks, laid out as the tokens are)."""
        other = copy.copy(self)
        other.pieces = pieces
        return other

    def __len__(self) -> int:
        return len(self.order)

    def _where(self, came: np.ndarray):
        """The chunks, starts and ends within them of the documents that came `came`-th."""
        chunk = np.searchsorted(self.first_doc, came, "right") - 1
        return chunk, self.offsets[came] - self.first_token[chunk], self.offsets[came + 1] - self.first_token[chunk]

    def __getitem__(self, i: int):
        chunk, start, end = (int(x) for x in self._where(self.order[i]))
        piece = self.pieces[chunk]
        return None if piece is None else piece[start: end]

    def __iter__(self):  # as __getitem__ does, 65,536 documents at a time without numpy's scalars
        for at in range(0, len(self.order), 1 << 16):
            for chunk, start, end in zip(*(x.tolist() for x in self._where(self.order[at: at + (1 << 16)]))):
                piece = self.pieces[chunk]
                yield None if piece is None else piece[start: end]


def _cached(corpus: _Corpus, tokenizer, layout: dict, build, count: str) -> tuple[dict[str, np.ndarray], int]:
    """`build(files)`'s rows of a corpus split and the number it holds under `count`, from the token cache when it has
    them (keyed by the split, the tokenizer and `layout`: whatever else the rows depend on)."""
    fingerprint = token_cache.fingerprint(tokenizer)
    key = {"data": corpus.key(), "tokenizer": fingerprint, **layout} if fingerprint and corpus.key() else None
    rows = dict(token_cache.arrays(key, build))
    return rows, int(rows.pop(count))


def _packed(corpus: _Corpus, tokenizer, seq_len: int) -> packing.Packed:
    """A causal LM's rows of one split (the documents end to end are cached, whatever the rows' length)."""
    tokens, context_turns = _cached(corpus, tokenizer, {"rows": "causal"},
                                    lambda files: _pack(corpus.chunks(), tokenizer, files), "context_turns")
    if context_turns:
        log.warning("%d earlier assistant turn(s) are not trained, only read: the chat template renders them "
                    "differently once the conversation goes on (e.g. without their reasoning)", context_turns)
    return packing.Packed(tokens, seq_len)


def _characters(corpora: dict[str, _Corpus]) -> text.CharTokenizer:
    """The character vocabulary of the corpora's documents (the token cache keeps it with their rows)."""
    def build(files):
        docs = [doc for corpus in corpora.values() for doc in corpus.docs]
        if any(isinstance(p, list) for p, _ in docs):
            raise DataError(CHAT_NEEDS)
        chars = text.CharTokenizer.from_texts([p + d + "\n\n" for p, d in docs]).chars
        return {"chars": np.asarray([ord(c) for c in chars], np.int32)}

    keys = [corpus.key() for corpus in corpora.values()]
    key = {"rows": "characters", "data": keys} if all(keys) else None
    return text.CharTokenizer(chr(c) for c in token_cache.arrays(key, build)["chars"])


def bytes_per_token(tokenizer) -> np.ndarray:
    """UTF-8 bytes of each token id (bits per byte of a language model); decodes the whole vocabulary of a
    sub-word tokenizer, so only callers that report bits per byte ask for it."""
    if isinstance(tokenizer, text.CharTokenizer):
        return np.asarray(tokenizer.byte_lengths())
    return np.asarray([len(tokenizer.decode([i]).encode()) for i in range(len(tokenizer))])


def _encoder_stream(chunks, tokenizer, seq_len: int, how: masking.Masking, line_by_line: bool = False,
                    files=None) -> tuple[dict[str, np.ndarray], int]:
    """A masked LM's documents (`chunks` of (place, document) pairs: _Corpus.chunks) with the tokenizer's special
    tokens, end to end in their places' order (packing.stream, into a token cache entry's `files`; packing.Grouped reads
    rows from it), with where their words start for whole-word masking; and how many examples were cut.
    `line_by_line`: each non-empty line of the documents is an example of its own, cut to seq_len (its last
    special token kept, as the tokenizer's truncation keeps it), as run_mlm's --line_by_line. Each chunk's text is
    dropped once encoded."""
    cut = 0

    def encoded(chunk):
        nonlocal cut
        if any(prompt for _, (prompt, _) in chunk):
            raise DataError("masked language modelling reads plain text documents; prompt/completion and chat "
                            "examples train a causal language model (a decoder)")
        texts = [(place, line) for place, (_, d) in chunk for line in d.splitlines() if line.strip()] if (
            line_by_line) else [(place, d) for place, (_, d) in chunk]  # a document's lines share its place
        for at in range(0, len(texts), 1000):  # encoded 1,000 texts a call (their ids' Python lists are large)
            part = texts[at: at + 1000]
            for (place, _), (ids, starts) in zip(part, how.encode(tokenizer, [t for _, t in part])):
                if line_by_line and len(ids) > seq_len:
                    cut, k = cut + 1, int(ids[-1] in how.special)
                    ids = ids[: seq_len - k] + ids[len(ids) - k:]
                    starts = starts and starts[: seq_len - k] + starts[len(starts) - k:]
                yield place, ids, starts

    dtype = _ids_dtype(tokenizer)
    documents, starts = _in_order(map(encoded, chunks), dtype, files)
    marks = {masking.WORD_STARTS: [None] * len(documents) if starts is None else starts} if how.whole_words else None
    return packing.stream(documents, alloc=files, dtype=dtype, marks=marks), cut


def _grouped(data_cfg, corpus: _Corpus, tokenizer, how: masking.Masking) -> tuple[packing.Grouped, int]:
    """A masked LM's rows of one split (before masking; the documents end to end are cached) and how many examples
    were cut."""
    def build(files):
        stream, cut = _encoder_stream(corpus.chunks(), tokenizer, data_cfg.seq_len, how, data_cfg.line_by_line,
                                      files)
        return {**stream, "cut": np.asarray(cut)}

    # rows of any length are read from the stream; a line (line_by_line) is cut to seq_len as it is encoded
    layout = {"rows": "masked", "line_by_line": data_cfg.line_by_line, "whole_words": how.whole_words,
              **({"seq_len": data_cfg.seq_len} if data_cfg.line_by_line else {})}
    stream, cut = _cached(corpus, tokenizer, layout, build, "cut")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return packing.Grouped(stream, data_cfg.seq_len, pad, data_cfg.line_by_line), cut


def _masked_splits(data_cfg, tokenizer, corpora: dict[str, _Corpus], model_cfg,
                   fresh: tuple[str, ...] = ("train",)) -> tuple[dict, masking.Masking, dict]:
    """{split: rows}: the `fresh` splits (training's) label every maskable token (masked anew each batch), the
    others are masked once (masking.py); the masking; {split: examples cut} (data.line_by_line's lines)."""
    how = masking.Masking.of(tokenizer, model_cfg)
    grouped = {split: _grouped(data_cfg, corpus, tokenizer, how) for split, corpus in corpora.items()}
    out = {split: masking.Masked(how, rows, None if split in fresh else data_cfg.shuffle_seed)
           for split, (rows, _) in grouped.items()}
    for split, arrays in out.items():  # scored, no label would read as loss 0 and perplexity 1
        if not _labelled(arrays):
            what = "no token the masks may choose (all special or unknown to the tokenizer)" if split in fresh else (
                "no masked token to score (too little text, or all of it special or unknown to the tokenizer)")
            raise DataError(f"data.name={data_cfg.name}: the {split} split has {what}")
    return out, how, {split: n for split, (_, n) in grouped.items()}


def _load_lm(data_cfg, tokenizer, masked_lm=None) -> TaskData:
    """A text corpus: documents tokenized (a character vocabulary from the corpus when no tokenizer is
    given) and packed into rows of data.seq_len; for a masked LM (`masked_lm`: its ModelConfig), concatenated
    and masked."""
    if data_cfg.line_by_line and masked_lm is None:
        raise ConfigError("data.line_by_line reads each line as an example for a masked LM (an encoder, as run_mlm "
                          "does); a causal LM packs its documents end to end")
    corpora = _lm_corpora(data_cfg, max_eval=data_cfg.max_eval)  # training's evaluations; `evaluate` reads all
    if masked_lm is not None:
        arrays, how, cut = _masked_splits(data_cfg, tokenizer, corpora, masked_lm)
        return TaskData(data_cfg.name, "lm", [], arrays["train"], arrays["validation"], cut, False, tokenizer,
                        masking=how)
    tokenizer = _characters(corpora) if tokenizer is None else tokenizer
    arrays = {split: _packed(corpus, tokenizer, data_cfg.seq_len) for split, corpus in corpora.items()}
    return TaskData(data_cfg.name, "lm", [], arrays["train"], arrays["validation"], {"train": 0, "validation": 0},
                    False, tokenizer, bytes_per_token=bytes_per_token(tokenizer))


def _labelled(arrays: dict[str, np.ndarray]) -> bool:
    """Whether a split has any label to score (a GLUE-style test split has none), read a block of rows at a time
    up to the first."""
    return any(losses.labelled(block).any() for block in pipeline.blocks(arrays["labels"]))


def load(data_cfg, tokenizer, problem_type: str = "", masked_lm=None) -> TaskData:
    """Train and validation (and test, when present) splits, tokenized; the label set from `data.labels`,
    the dataset's preset, or the training split; a sequence task's labels are read as `problem` decides
    (model.problem_type, or the labels). `tokenizer` may be None for a text corpus (characters) read by a
    causal LM; `masked_lm` (a ModelConfig): the corpus trains that masked LM (an encoder family's lm task),
    masked as its mlm_* keys say."""
    ds = dataset(data_cfg)
    if ds.task == "lm":
        return _load_lm(data_cfg, tokenizer, masked_lm)
    if ds.task == "qa":
        return _load_qa(data_cfg, tokenizer)
    if data_cfg.line_by_line:
        raise ConfigError(f"data.line_by_line reads a text corpus line by line for a masked LM; data.name="
                          f"{data_cfg.name} is a {ds.task} task")
    splits = _raw_splits(data_cfg, ds)
    tokenizer = tokenize.for_words(tokenizer) if ds.task == "token" else tokenizer
    for split, most in (("train", data_cfg.max_train), ("validation", data_cfg.max_eval)):
        if most and split in splits:
            splits[split] = splits[split].head(most)
    if not splits["train"].words:
        raise DataError(f"the train split of {data_cfg.name} is empty")
    head = problem(data_cfg, problem_type, splits["train"]) if ds.task == "sequence" else ""
    label_names = _outputs(data_cfg, ds, splits["train"]) if head == REGRESSION else _label_names(
        data_cfg, ds, splits["train"], head)
    encoded, truncated = {}, {}
    for split, examples in splits.items():
        enc = _encode(data_cfg, ds, tokenizer, split, examples, label_names, head)
        encoded[split], truncated[split] = enc.arrays, enc.truncated
    test_labelled = "test" not in encoded or _labelled(encoded["test"])
    return TaskData(data_cfg.name, ds.task, label_names, encoded["train"], encoded["validation"], truncated,
                    ds.source.startswith("synthetic"), tokenizer, encoded.get("test"), test_labelled,
                    problem_type=head)


SPAN_LABELS = ["start", "end"]  # an answer-span head's two outputs


def _qa_questions(data_cfg, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, list]:
    """The `required` (and present `optional`) splits' questions (the first data.max_train / data.max_eval of
    train and validation); unanswerable ones need data.unanswerable (SQuAD 2.0), so a 2.0 file is never trained
    as 1.1 by mistake."""
    if dataset(data_cfg).source == "synthetic_qa":  # validation's answers are names training never saw
        bare = data_cfg.unanswerable  # SQuAD 2.0-style: some questions without an answer
        made = {"train": lambda: synthetic.qa_corpus(data_cfg.num_train, data_cfg.shuffle_seed, unanswerable=bare),
                "validation": lambda: synthetic.qa_corpus(data_cfg.num_eval, data_cfg.shuffle_seed + 1, True, bare)}
        return {split: squad.from_records([(f"the generated {split} split, question {n}", row)
                                           for n, row in enumerate(made[split](), start=1)])
                for split in required if split in made}
    paths = files.find_splits(data_cfg.data_dir, squad.SPLIT_FILES, "question answering", required)
    out = {}
    for split, path in paths.items():
        if split not in required + optional:
            continue
        most = {"train": data_cfg.max_train, "validation": data_cfg.max_eval}.get(split, 0)
        questions = squad.read(path)[: most or None]
        if not questions:
            raise DataError(f"{path}: no questions")
        bare = [q for q in questions if not q.answers]
        if bare and split != "test" and not data_cfg.unanswerable:
            raise DataError(f"{bare[0].place}: no answer ({len(bare)} of the {split} split's {len(questions)} "
                            f"questions have none); for SQuAD 2.0-style data set data.unanswerable=true")
        out[split] = questions
    return out


def _windows(data_cfg, tokenizer, questions: list[squad.Question], offsets: bool = True) -> squad.Windows:
    if isinstance(tokenizer, text.CharTokenizer) or tokenizer is None:
        raise ConfigError("question answering reads texts through a Hugging Face tokenizer: set data.tokenizer (or "
                          "model.pretrained) to a folder or name whose tokenizer to use")
    return squad.windows(tokenizer, questions, data_cfg.seq_len, data_cfg.doc_stride, offsets)


def _load_qa(data_cfg, tokenizer) -> TaskData:
    """Question answering: each split's questions cut into windows (data/squad.py); the eval and test splits keep
    their windows' way back to the questions, for the answers and their scores."""
    windows = {split: _windows(data_cfg, tokenizer, questions, offsets=split != "train")  # train: labels only
               for split, questions in _qa_questions(data_cfg, ("train", "validation"), ("test",)).items()}
    arrays = {split: w.arrays for split, w in windows.items()}
    test = windows.get("test")
    return TaskData(data_cfg.name, "qa", list(SPAN_LABELS), arrays["train"], arrays["validation"],
                    {split: 0 for split in arrays}, dataset(data_cfg).source.startswith("synthetic"), tokenizer,
                    arrays.get("test"),
                    test is None or any(q.answers for q in test.questions),
                    windows={k: v for k, v in windows.items() if k != "train"})


def source_of(data_cfg) -> str:
    """Where a dataset's examples come from, as a report names it: its folder, its catalog or 'generated'."""
    ds = dataset(data_cfg)
    return data_cfg.data_dir or (f"TFDS catalog {ds.catalog}" if ds.catalog else "generated")


def _split_source(data_cfg, split: str) -> Dataset:
    """The dataset one split is read from, checked: a split name, and no folder for a generated corpus."""
    ds = dataset(data_cfg)
    if split not in ("train", "validation", "test"):
        raise ConfigError(f"--split must be train, validation or test, got {split!r}")
    if ds.source.startswith("synthetic") and data_cfg.data_dir:
        raise ConfigError(f"data.name={data_cfg.name} is generated, not read from {data_cfg.data_dir} (evaluate "
                          f"names the files' kind with --data-name conll, tsv, csv, jsonl, text or squad)")
    return ds


def qa_split(data_cfg, tokenizer, split: str) -> squad.Windows:
    """One question-answering split's windows (what `evaluate` scores answers by)."""
    return _windows(data_cfg, tokenizer, _qa_questions(data_cfg, (split,))[split])


def scored_split(data_cfg, tokenizer, split: str, problem_type: str = "", masked_lm=None):
    """(arrays, windows) of a split to evaluate: load_split's arrays, and a question-answering split's windows
    (None for other tasks), which `evaluate` turns logits back into answers with."""
    if _split_source(data_cfg, split).task == "qa":
        windows = qa_split(data_cfg, tokenizer, split)
        return windows.arrays, windows
    return load_split(data_cfg, tokenizer, split, problem_type, masked_lm), None


def load_split(data_cfg, tokenizer, split: str, problem_type: str = "", masked_lm=None) -> dict[str, np.ndarray]:
    """One split of a dataset folder (only its file is needed), with a trained run's label set
    (`data.labels`, set in every resolved spec), read as the resolved model.problem_type says; a text corpus
    masked as a masked LM's training evaluations mask it (`masked_lm`: its ModelConfig)."""
    ds = _split_source(data_cfg, split)
    if ds.task == "lm":
        corpus = _lm_corpora(data_cfg, required=(split,))[split]
        if masked_lm is not None:
            return _masked_splits(data_cfg, tokenizer, {split: corpus}, masked_lm, fresh=())[0][split]
        return _packed(corpus, tokenizer, data_cfg.seq_len)
    if ds.task == "qa":
        return qa_split(data_cfg, tokenizer, split).arrays
    raw = _raw_splits(data_cfg, ds, required=(split,))
    if split not in raw:
        raise MissingSplit(f"data.name={data_cfg.name} has no {split} split", split)
    names = data_cfg.labels.split(",") if data_cfg.labels else []
    tokenizer = tokenize.for_words(tokenizer) if ds.task == "token" else tokenizer
    arrays = _encode(data_cfg, ds, tokenizer, split, raw[split], names, problem_type).arrays
    if not _labelled(arrays):  # scored, it would read as loss 0 and accuracy 0
        raise DataError(f"{raw[split].place}: the {split} split has no labels, so there is nothing to score; "
                        f"`jaxbatch predict` labels it")
    return arrays
