"""`jaxbatch predict`: a trained model (run dir or Hugging Face folder) on new text.

Input is one sentence per line (split into words and punctuation, with character offsets; for a text
classifier `first<TAB>second` is a text pair), a CoNLL file (first column; tags, if any, are ignored) or a
text-classification file (TSV `text<TAB>label`, or TSV, CSV or JSON lines naming a text column or a pair of
them, data/tsv.py; labels are ignored); for question answering, `question<TAB>context` lines or a SQuAD-style
file (data/squad.py; answers are ignored).
Sentences are length-bucketed into batches, run through the same compiled eval step as `evaluate`, and
written in input order, each JSON record with its input `line` (blank lines are skipped): entity spans with
labels and scores and one tag per word (token tasks; JSON lines or CoNLL columns; sentences longer than
data.seq_len in overlapping windows), the label and every class probability (sequence tasks), a masked
LM's likeliest tokens for each mask token in the line (as transformers' fill-mask pipeline), or the answer to
each question, a span of its context (qa; a long context in overlapping windows).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import re
import sys
from pathlib import Path
from typing import Callable, Iterable, Iterator, TextIO

import numpy as np

from jaxbatch import evaluate, losses
from jaxbatch import run as run_lib
from jaxbatch.data import conll, pipeline, squad, tokenize, tsv
from jaxbatch.data.files import RECORD_SUFFIXES, read_text_file, text_lines
from jaxbatch.errors import DataError
from jaxbatch.losses import IGNORE_INDEX

WORD = re.compile(r"\w+(?:[-'’.]\w+)*|[^\w\s]")  # words (with inner hyphens/apostrophes) and single punctuation


@dataclasses.dataclass
class Sentence:
    text: str
    words: list[str]
    offsets: list[tuple[int, int]]  # character span of each word in `text`
    line: int = 0  # where it starts in the input (1-based), so records line up with a file that skips blanks
    pair: "Sentence | None" = None  # a text pair's second text (sequence tasks; a question's context)
    id: str = ""  # a question's id in a SQuAD-style file


def split_words(line: str, number: int = 0) -> Sentence:
    matches = list(WORD.finditer(line))
    return Sentence(line, [m.group() for m in matches], [m.span() for m in matches], number)


def from_words(words: list[str], number: int = 0) -> Sentence:
    offsets, pos = [], 0
    for w in words:
        offsets.append((pos, pos + len(w)))
        pos += len(w) + 1
    return Sentence(" ".join(words), list(words), offsets, number)


def input_format(path: Path | None, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    if path is None:
        return "text"
    if path.suffix in RECORD_SUFFIXES:  # word lists (data/conll.py), questions (data/squad.py) or texts (data/tsv.py)
        keys = _first_keys(path)
        return "conll" if keys & set(conll.WORD_KEYS) else "squad" if {"question", "context"} <= keys or (
            "data" in keys) else "tsv"
    if path.suffix in (".tsv", ".csv"):  # text-classification files (data/tsv.py)
        return "tsv"
    names = {n for names in conll.SPLIT_FILES.values() for n in names}
    if path.suffix in (".conll", ".conllu", ".iob", ".bio") or path.name in names:
        return "conll"
    return "text"


def _first_keys(path: Path) -> set[str]:
    """The lower-cased keys of a JSON lines or Parquet file's records (its first line; its columns), or of a
    whole-file JSON object (SQuAD's: `data`). A bad file: none, and the reader it goes to says what is wrong."""
    import pyarrow
    import pyarrow.parquet as pq

    try:
        if path.suffix == ".parquet":
            keys = pq.read_schema(path).names
        else:
            with open(path, encoding="utf-8-sig") as f:
                line = next((line for line in f if line.strip()), "")
                try:
                    first = json.loads(line)  # a record of JSON lines, or a whole object on one line (SQuAD's)
                except json.JSONDecodeError:  # an object written over several lines: the whole file
                    first = json.loads(line + f.read())
            keys = list(first) if isinstance(first, dict) else []
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, pyarrow.ArrowException):
        return set()
    return {k.strip().lower() for k in keys}


class Sentences:
    """The input's sentences, in order, built as they are iterated: a sentence's words and offsets take ~20 times
    its text's memory (~3 KB for 20 words), so a file of millions of lines is never held as Sentences. Each
    pass (predict checks the whole input, then labels it) reads a text file again, a block at a time; other
    inputs hold their parsed rows (texts and words) and build a chunk's Sentences when it is reached."""

    def __init__(self, make: Callable[[], Iterator[Sentence]]):
        self._make = make

    def __iter__(self) -> Iterator[Sentence]:
        return self._make()

    def digest(self) -> str:
        """What every host must have read alike (distributed.same_on_every_host), in one pass."""
        import hashlib

        h = hashlib.sha256()
        for s in self:
            h.update(repr(s).encode())
        return h.hexdigest()


def read_sentences(path: Path | None, fmt: str, stdin: TextIO | None = None) -> Sentences:
    """Sentences from a file (or stdin for text), in order; empty text lines are skipped. The input is read and
    checked here (bad input fails before the model loads)."""
    fmt = input_format(path, fmt)
    if fmt == "conll":
        words = conll.read(path, tagged=False)
        return Sentences(lambda: (from_words(s.words, s.line) for s in words))
    if fmt == "tsv":
        examples = tsv.read(path)
        return Sentences(lambda: (dataclasses.replace(split_words(e.text, e.line), pair=split_words(e.text_pair)
                                                      if e.text_pair else None) for e in examples))
    if fmt == "squad":
        questions = squad.read(path)
        return Sentences(lambda: (Sentence(q.question, [], [], n, Sentence(q.context, [], []), q.id)
                                  for n, q in enumerate(questions, start=1)))
    if fmt != "text":
        raise DataError(f"--format must be auto, text, conll, tsv or squad, got {fmt!r}")
    if path is not None and path.is_file():  # read again at each pass; a pipe (`<(zcat x.gz)`) can be read once
        lines = functools.partial(text_lines, path)
    else:
        lines = (_stdin_text(stdin) if path is None else read_text_file(path)).splitlines().__iter__
    if not sum(bool(line.strip()) for line in lines()):  # a whole pass: every byte is UTF-8 too
        raise DataError(f"{path or 'stdin'}: no text to predict")
    return Sentences(lambda: (split_words(line.strip(), n) for n, line in enumerate(lines(), start=1)
                              if line.strip()))


def _stdin_text(stdin: TextIO | None) -> str:
    """Standard input's text, read as bytes and decoded as files are (Python's own reading turns bytes that are
    not UTF-8 into surrogates, which the tokenizer then fails on in a traceback)."""
    from jaxbatch.data.files import decode

    stream = stdin or sys.stdin
    raw = getattr(stream, "buffer", None)  # none: a text stream already (a caller's StringIO)
    return stream.read() if raw is None else decode(raw.read(), "stdin")


def _pieces(tokenizer, words: list[list[str]]) -> list[np.ndarray]:
    """Word pieces of each word of each sentence (special tokens aside)."""
    enc = tokenizer(words, is_split_into_words=True, add_special_tokens=False)
    return [np.bincount([w for w in enc.word_ids(i) if w is not None], minlength=len(ws)).astype(int)
            for i, ws in enumerate(words)]


def windows(pieces: np.ndarray, budget: int) -> list[tuple[int, int]]:
    """Word windows [a, b) covering a sentence, each within `budget` pieces (at least one word), each
    starting half way through the one before, so every word is seen with context on both sides (the
    stride of Hugging Face's token-classification pipeline). One window when the sentence fits."""
    out, a, n = [], 0, len(pieces)
    while True:
        b, used = a, 0
        while b < n and (b == a or used + pieces[b] <= budget):
            used, b = used + pieces[b], b + 1
        out.append((a, b))
        if b >= n:
            return out
        a = max(a + 1, (a + b) // 2)


def _context(i: int, a: int, b: int, n: int) -> int:
    """Words of context word i has in window [a, b) on its poorer side (a sentence's own ends cut nothing)."""
    return min(i - a if a > 0 else n, b - 1 - i if b < n else n)


def predict_arrays(restored: run_lib.Restored, arrays: dict, buckets: int = 3) -> dict[str, list[np.ndarray]]:
    """The family's outputs for every row of `arrays`, in order (one array per row); rows are grouped by
    length bucket so short sentences are not padded to seq_len (one compiled shape per bucket)."""
    seq_len = arrays["input_ids"].shape[1]
    lengths = arrays["attention_mask"].sum(1)
    bounds = pipeline.bucket_lengths(seq_len, buckets, lengths)
    member = np.searchsorted(bounds, lengths)
    out: dict[str, list] = {}
    for b, length in enumerate(bounds):
        rows = np.flatnonzero(member == b)
        if not len(rows):
            continue
        _, got = evaluate.outputs(restored.run, restored.params, pipeline.take(arrays, rows, length))
        for k, v in got.items():
            column = out.setdefault(k, [None] * len(lengths))
            for r, row in zip(rows, v):
                column[r] = row
    return out


CHUNK = 4096  # sentences predicted at a time: a chunk's arrays and records are held, not the input's


def predict(restored: run_lib.Restored, sentences: Iterable[Sentence], where: str = "input") -> list[dict]:
    """Every sentence's record (`records`), as a list."""
    return list(records(restored, sentences, where))


def records(restored: run_lib.Restored, sentences: Iterable[Sentence], where: str = "input") -> Iterator[dict]:
    """One record per sentence: `entities` (token tasks: text, label, start, end, score = the mean
    probability of the predicted tag over the entity's words; plain tags such as part of speech have no
    entities but a `scores` list, each tag's probability) and `tags`, one per word however long the
    sentence (a sentence longer than data.seq_len is run as overlapping windows, each word labelled from the
    window where it has the most context); or `label` and `probabilities` (sequence tasks; `labels` for a
    multi-label head, `score` for a regression head: a text longer than data.seq_len is truncated, and the
    record says by how many pieces); a masked LM's fills, a question's answer. `where` names the input in errors.
    The input is checked whole when the first record is asked for, then predicted and yielded CHUNK sentences at a
    time, so a writer's output grows as they come and a bad line is named before anything is written; each is
    a pass over `sentences` (Sentences reads its file again), holding one chunk."""
    task = restored.run.spec.model.task
    run = {"lm": _fill_masks, "qa": _answer, "token": _tag}.get(task, _classify)
    _check(restored, sentences, where)
    for chunk in _chunks(sentences, task):
        yield from run(restored, chunk)


def _chunks(sentences: Iterable[Sentence], task: str) -> Iterator[list[Sentence]]:
    """CHUNK sentences at a time; a text line `first<TAB>second` read as a pair where the task takes pairs."""
    it = iter(sentences)
    pairs = task not in ("lm", "token")
    while chunk := [_paired(s) if pairs else s for s in itertools.islice(it, CHUNK)]:
        yield chunk


def _check(restored: run_lib.Restored, sentences: Iterable[Sentence], where: str) -> None:
    """The whole input, checked for the model before anything is predicted: the first bad line is one error.
    A masked LM's and a question's checks tokenize a chunk at a time; a tagger's and a classifier's read each
    sentence alone."""
    task = restored.run.spec.model.task
    if task in ("lm", "qa"):
        for chunk in _chunks(sentences, task):
            if task == "lm":
                _check_masks(restored, chunk)
            else:
                _check_questions(restored, _check_pairs("qa", chunk, where))
        return
    if task == "token":
        _check_pairs("token", sentences, where)
        return
    single, paired = None, False  # a classifier reads single texts or pairs, not both
    for s in map(_paired, sentences):
        single = single or (s if s.pair is None else None)
        paired = paired or s.pair is not None
        if single and paired:
            raise DataError(f"line {single.line}: a single text among text pairs (a pair is 'first<TAB>second'); "
                            f"a model reads one or the other")


def _tag(restored: run_lib.Restored, sentences: list[Sentence]) -> list[dict]:
    """A token classifier's records (predict's)."""
    from seqeval.metrics.sequence_labeling import get_entities

    spec = restored.run.spec
    names = run_lib.label_names(spec)
    words = [s.words or ["."] for s in sentences]  # a line of only spaces never reaches here; guard anyway
    tokenizer = tokenize.for_words(restored.tokenizer)
    pieces = _pieces(tokenizer, words)
    budget = spec.data.seq_len - tokenize.tagged_specials(tokenizer)  # [CLS] ... [SEP], or a BOS
    rows, owners = [], []  # one row per window; the labels carry each word's index, so pieces map back to words
    for i, ws in enumerate(words):
        for a, b in windows(pieces[i], budget):
            rows.append((ws[a:b], list(range(a, b))))
            owners.append((i, a, b))
    enc = tokenize.encode_tagged(tokenizer, [r[0] for r in rows], [r[1] for r in rows], spec.data.seq_len)
    word_of = enc.arrays["labels"]
    out = predict_arrays(restored, {**enc.arrays, "labels": np.where(word_of != IGNORE_INDEX, 0, IGNORE_INDEX)})
    best: list[dict[int, tuple]] = [{} for _ in sentences]  # word -> (context, tag id, probability)
    for r, (i, a, b) in enumerate(owners):
        for j in np.flatnonzero(word_of[r] != IGNORE_INDEX):  # each word's first piece
            word, pred = int(word_of[r, j]), int(out["preds"][r][j])
            candidate = (_context(word, a, b, len(words[i])), pred, float(out["probs"][r][j, pred]))
            if word not in best[i] or candidate[0] > best[i][word][0]:
                best[i][word] = candidate
    records = []
    for i, s in enumerate(sentences):
        chosen = [best[i].get(w, (0, names.index("O") if "O" in names else 0, 0.0)) for w in range(len(s.words))]
        tags = [names[c[1]] for c in chosen]  # a word with no pieces at all (a lone control character) is O
        if not conll.is_entity_scheme(names):
            records.append({**_line(s), "text": s.text, "tags": tags, "scores": [round(c[2], 6) for c in chosen]})
            continue
        entities = []
        for label, start, end in get_entities(tags):
            a, b = s.offsets[start][0], s.offsets[end][1]
            entities.append({"text": s.text[a:b], "label": label, "start": a, "end": b,
                             "score": round(float(np.mean([c[2] for c in chosen[start:end + 1]])), 6)})
        records.append({**_line(s), "text": s.text, "entities": entities, "tags": tags})
    return records


def _paired(s: Sentence) -> Sentence:
    """A text line `first<TAB>second` is a pair of texts (files name their pair columns: data/tsv.py)."""
    if s.pair is not None or "\t" not in s.text:
        return s
    first, second = (part.strip() for part in s.text.split("\t", 1))
    return dataclasses.replace(split_words(first, s.line), pair=split_words(second))


def _classify(restored: run_lib.Restored, sentences: list[Sentence]) -> list[dict]:
    """The label and every class probability (a multi-label head: its labels, those above probability 1/2;
    a regression head: the score, or each output's) of each text or text pair; a record says how many word
    pieces were cut to fit data.seq_len."""
    spec, tokenizer = restored.run.spec, restored.tokenizer
    names = run_lib.label_names(spec)
    words = [s.words or ["."] for s in sentences]  # a line of only spaces never reaches here; guard anyway
    pairs = [s.pair.words or ["."] for s in sentences] if sentences[0].pair is not None else None
    shape = restored.run.family.batch_shapes(spec.model, len(words), spec.data.seq_len)["labels"]
    dummy = np.zeros(shape, losses.label_dtype(spec.model))  # labels only say the batch's shape here
    enc = tokenize.encode_labelled(tokenizer, words, dummy, spec.data.seq_len, pairs)
    out = predict_arrays(restored, enc.arrays)
    records = []
    for i, s in enumerate(sentences):
        record = {**_line(s), "text": s.text, **({"text_pair": s.pair.text} if pairs else {})}
        if spec.model.problem_type == losses.REGRESSION and spec.model.num_labels > 1:
            record["scores"] = {n: round(float(p), 6) for n, p in zip(names, out["preds"][i])}
        elif spec.model.problem_type == losses.REGRESSION:
            record["score"] = round(float(out["preds"][i]), 6)
        else:  # a multi-label head's labels: every class whose probability is above 1/2
            record.update({"labels": [n for n, y in zip(names, out["preds"][i]) if y]}
                          if spec.model.problem_type == losses.MULTI_LABEL else {"label": names[int(out["preds"][i])]},
                          probabilities={n: round(float(p), 6) for n, p in zip(names, out["probs"][i])})
        if enc.cut[i]:
            record["truncated_pieces"] = int(enc.cut[i])
        records.append(record)
    return records


def _check_pairs(task: str, sentences: Iterable[Sentence], where: str) -> Iterable[Sentence]:
    """`sentences`, checked: a question answering model reads pairs (question, context), a token classifier the
    words of one text; the other kind is named in one line (a tagger given a SQuAD file labelled no words)."""
    if task == "qa":
        lone = next((s for s in sentences if s.pair is None), None)
        if lone is not None:
            raise DataError(f"{where}:{lone.line}: a question answering model reads 'question<TAB>context' lines (or "
                            f"a SQuAD-style file); this line has no context")
    if task == "token":
        paired = next((s for s in sentences if s.pair is not None), None)
        if paired is not None:
            raise DataError(f"{where}:{paired.line}: a pair of texts (question and context, or two sentences), and a "
                            f"token classifier labels the words of one text")
    return sentences


def _questions(sentences: list[Sentence]) -> list[squad.Question]:
    return [squad.Question(s.id or str(s.line), s.text, s.pair.text, (), (), f"line {s.line}") for s in sentences]


def _check_questions(restored: run_lib.Restored, sentences: list[Sentence]) -> list[Sentence]:
    """`sentences`, checked for a question answering model: each question leaves its context room in a window."""
    spec = restored.run.spec
    squad.checked_stride(restored.tokenizer, _questions(sentences), spec.data.seq_len, spec.data.doc_stride)
    return sentences


def _answer(restored: run_lib.Restored, sentences: list[Sentence]) -> list[dict]:
    """Each question's answer in its context (`question<TAB>context`, or a SQuAD-style file's): `answer`, its
    `start` and `end` characters in the context, and `score` (squad.answers); "" where a model trained with
    data.unanswerable finds none, which also gives each question's `null_score_diff` and `best_span`."""
    spec = restored.run.spec
    w = squad.windows(restored.tokenizer, _questions(sentences), spec.data.seq_len, spec.data.doc_stride)
    _, out = evaluate.outputs(restored.run, restored.params, w.arrays)  # in length buckets, back at seq_len
    found = squad.answers(w, out["start_logits"], out["end_logits"], spec.data.max_answer_length,
                          spec.data.unanswerable, spec.data.null_threshold)
    kept = ("answer", "score", "start", "end", "null_score_diff", "best_span")
    return [{**_line(s), **({"id": s.id} if s.id else {}), "question": s.text, **{k: a[k] for k in kept if k in a}}
            for s, a in zip(sentences, found)]


def _check_masks(restored: run_lib.Restored, sentences: list[Sentence]) -> list[Sentence]:
    """`sentences`, checked for a masked LM: a line without a mask token, with one past data.seq_len tokens, or with
    more than the head predicts is one error naming it (tokenized CHUNK lines at a time, only counted)."""
    from jaxbatch.losses import mlm_predictions

    spec, tok = restored.run.spec, restored.tokenizer
    most = mlm_predictions(spec.data.seq_len, spec.model.mlm_probability)
    for at in range(0, len(sentences), CHUNK):
        texts = [s.text for s in sentences[at: at + CHUNK]]
        cut = tok(texts, truncation=True, max_length=spec.data.seq_len)["input_ids"]  # as _fill_masks reads them
        for s, whole, kept in zip(sentences[at: at + CHUNK], tok(texts)["input_ids"], cut):
            n, inside = (sum(i == tok.mask_token_id for i in ids) for ids in (whole, kept))
            if not n or inside < n or n > most:
                why = (f"has no {tok.mask_token} to fill" if not n else f"has more than {most} {tok.mask_token} tokens"
                       if n > most else f"has a {tok.mask_token} past data.seq_len={spec.data.seq_len} tokens")
                raise DataError(f"line {s.line}: {why}")
    return sentences


def _fill_masks(restored: run_lib.Restored, sentences: list[Sentence]) -> list[dict]:
    """A masked LM's `predictions` for each line (checked by `_check_masks`): per mask token, in order, its likeliest
    tokens (`token`, `token_str`, `score`: the probability, `sequence`: the line with that mask filled in), as
    transformers' fill-mask pipeline writes them."""
    spec, tok = restored.run.spec, restored.tokenizer
    texts = [s.text for s in sentences]
    enc = tok(texts, padding="max_length", truncation=True, max_length=spec.data.seq_len, return_tensors="np")
    ids = enc["input_ids"].astype(np.int32)
    masks = ids == tok.mask_token_id
    arrays = {"input_ids": ids, "attention_mask": enc["attention_mask"].astype(np.int32),
              "token_type_ids": enc.get("token_type_ids", np.zeros_like(ids)).astype(np.int32),
              "labels": np.where(masks, ids, IGNORE_INDEX).astype(np.int32)}
    out = predict_arrays(restored, arrays)
    records = []
    for r, s in enumerate(sentences):
        row, at = ids[r][arrays["attention_mask"][r] == 1], np.flatnonzero(masks[r])
        filled = []
        for k, position in enumerate(at):  # the head's positions are each row's masks, in order
            choices = []
            for token, p in zip(out["top_ids"][r][k], out["top_probs"][r][k]):
                sequence = row.copy()
                sequence[position] = token
                choices.append({"score": round(float(p), 6), "token": int(token),
                                "token_str": tok.decode([int(token)]),
                                "sequence": tok.decode(sequence, skip_special_tokens=len(at) == 1)})
            filled.append(choices)
        records.append({**_line(s), "text": s.text, "predictions": filled})
    return records


def _line(s: Sentence) -> dict:
    return {"line": s.line} if s.line else {}


def write(records: Iterable[dict], sentences: Iterable[Sentence], fmt: str, out: TextIO | None = None) -> None:
    """JSON lines, or (token tasks) CoNLL columns `word tag` with a blank line between sentences."""
    out = out or sys.stdout
    words = (s.words for s in sentences) if fmt == "conll" else itertools.repeat(None)  # JSON: no pass over them
    for record, ws in zip(records, words):
        if ws is not None and "tags" in record:
            out.write("".join(f"{w} {t}\n" for w, t in zip(ws, record["tags"])) + "\n")
        else:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
