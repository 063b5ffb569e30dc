"""`jaxbatch predict`: a trained model (run dir or Hugging Face folder) on new text.

Input is one sentence per line (split into words and punctuation, with character offsets), a CoNLL file
(first column; tags, if any, are ignored) or a TSV file (`text<TAB>label`, or `index<TAB>sentence`).
Sentences are length-bucketed into batches, run through the same compiled eval step as `evaluate`, and
written in input order: entity spans with labels and scores (token tasks; JSON lines or CoNLL columns),
or the label and every class probability (sequence tasks).
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path
from typing import Iterable, TextIO

import numpy as np

from jaxbatch import evaluate
from jaxbatch import run as run_lib
from jaxbatch.data import conll, pipeline, tokenize, tsv
from jaxbatch.errors import DataError
from jaxbatch.losses import IGNORE_INDEX

WORD = re.compile(r"\w+(?:[-'’.]\w+)*|[^\w\s]")  # words (with inner hyphens/apostrophes) and single punctuation


@dataclasses.dataclass
class Sentence:
    text: str
    words: list[str]
    offsets: list[tuple[int, int]]  # character span of each word in `text`


def split_words(line: str) -> Sentence:
    matches = list(WORD.finditer(line))
    return Sentence(line, [m.group() for m in matches], [m.span() for m in matches])


def from_words(words: list[str]) -> Sentence:
    offsets, pos = [], 0
    for w in words:
        offsets.append((pos, pos + len(w)))
        pos += len(w) + 1
    return Sentence(" ".join(words), list(words), offsets)


def input_format(path: Path | None, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    if path is None:
        return "text"
    if path.suffix == ".tsv":
        return "tsv"
    names = {n for names in conll.SPLIT_FILES.values() for n in names}
    if path.suffix in (".conll", ".iob", ".bio") or path.name in names:
        return "conll"
    return "text"


def read_sentences(path: Path | None, fmt: str, stdin: TextIO | None = None) -> list[Sentence]:
    """Sentences from a file (or stdin for text), in order; empty text lines are skipped."""
    fmt = input_format(path, fmt)
    if fmt == "conll":
        return [from_words(s.words) for s in conll.read(path)]
    if fmt == "tsv":
        return [split_words(e.text) for e in tsv.read(path)]
    if fmt != "text":
        raise DataError(f"--format must be auto, text, conll or tsv, got {fmt!r}")
    lines = (stdin or sys.stdin).read().splitlines() if path is None else _read_lines(path)
    sentences = [split_words(line.strip()) for line in lines if line.strip()]
    if not sentences:
        raise DataError(f"{path or 'stdin'}: no text to predict")
    return sentences


def _read_lines(path: Path) -> list[str]:
    from jaxbatch.data.files import read_text_file

    return read_text_file(path).splitlines()


def _encode(restored: run_lib.Restored, sentences: list[Sentence]) -> tokenize.Encoded:
    spec = restored.run.spec
    words = [s.words or ["."] for s in sentences]  # a line of only spaces never reaches here; guard anyway
    if spec.model.task == "token":
        return tokenize.encode_tagged(restored.tokenizer, words, [[0] * len(w) for w in words], spec.data.seq_len)
    return tokenize.encode_labelled(restored.tokenizer, words, [0] * len(words), spec.data.seq_len)


def predict_arrays(restored: run_lib.Restored, arrays: dict, buckets: int = 3) -> dict[str, list[np.ndarray]]:
    """The family's outputs for every row of `arrays`, in order (one array per row); rows are grouped by
    length bucket so short sentences are not padded to seq_len (one compiled shape per bucket)."""
    seq_len = arrays["input_ids"].shape[1]
    lengths = arrays["attention_mask"].sum(1)
    bounds = pipeline.bucket_lengths(seq_len, buckets)
    member = np.searchsorted(bounds, lengths)
    out: dict[str, list] = {}
    for b, length in enumerate(bounds):
        rows = np.flatnonzero(member == b)
        if not len(rows):
            continue
        part = {k: (v[rows, :length] if v.ndim == 2 and v.shape[1] == seq_len else v[rows]) for k, v in arrays.items()}
        _, got = evaluate.outputs(restored.run, restored.params, part)
        for k, v in got.items():
            column = out.setdefault(k, [None] * len(lengths))
            for r, row in zip(rows, v):
                column[r] = row
    return out


def predict(restored: run_lib.Restored, sentences: list[Sentence]) -> list[dict]:
    """One record per sentence: `entities` (token tasks: text, label, start, end, score = the mean
    probability of the predicted tag over the entity's words) and `tags`; or `label` and `probabilities`."""
    from seqeval.metrics.sequence_labeling import get_entities

    names = run_lib.label_names(restored.run.spec)
    enc = _encode(restored, sentences)
    out = predict_arrays(restored, enc.arrays)
    records = []
    for i, s in enumerate(sentences):
        if restored.run.spec.model.task != "token":
            probs = out["probs"][i]
            records.append({"text": s.text, "label": names[int(out["preds"][i])],
                            "probabilities": {n: round(float(p), 6) for n, p in zip(names, probs)}})
            continue
        first = np.flatnonzero(enc.arrays["labels"][i] != IGNORE_INDEX)  # each kept word's first piece
        preds, probs = out["preds"][i], out["probs"][i]
        tags = [names[int(preds[j])] for j in first]
        scores = [float(probs[j, preds[j]]) for j in first]
        entities = []
        for label, start, end in get_entities(tags):
            a, b = s.offsets[start][0], s.offsets[end][1]
            entities.append({"text": s.text[a:b], "label": label, "start": a, "end": b,
                             "score": round(float(np.mean(scores[start:end + 1])), 6)})
        record = {"text": s.text, "entities": entities, "tags": tags}
        if len(tags) < len(s.words):
            record["truncated_words"] = len(s.words) - len(tags)
        records.append(record)
    return records


def write(records: Iterable[dict], sentences: list[Sentence], fmt: str, out: TextIO | None = None) -> None:
    """JSON lines, or (token tasks) CoNLL columns `word tag` with a blank line between sentences."""
    out = out or sys.stdout
    for record, s in zip(records, sentences):
        if fmt == "conll" and "tags" in record:
            tags = record["tags"] + ["O"] * (len(s.words) - len(record["tags"]))
            out.write("".join(f"{w} {t}\n" for w, t in zip(s.words, tags)) + "\n")
        else:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
