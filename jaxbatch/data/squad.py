"""Extractive question answering, as Hugging Face's run_qa.py does it: SQuAD-style files read into questions, each
question and its context tokenized into windows of data.seq_len (a long context in several, `doc_stride` tokens
overlapping), each window labelled with its answer's first and last token (the [CLS] position when the answer is
not inside it, or the question has none: SQuAD 2.0), and a model's start and end logits turned back into answer
text (`answers`: the best span over a question's windows, as HF's `postprocess_qa_predictions`).

Files: SQuAD's own JSON (`{"data": [{"paragraphs": [{"context", "qas": [{"id", "question", "answers": [{"text",
"answer_start"}]}]}]}]}`, 1.1 and 2.0), or the Hugging Face hub's records (JSON lines, Parquet) with `id`,
`question`, `context` and `answers: {"text": [...], "answer_start": [...]}`. Every answer must be the context's
text at its `answer_start`; an error names the file and record.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from jaxbatch.data import files, packing, tokenize
from jaxbatch.errors import ConfigError, DataError

SPLIT_FILES = {split: tuple(f"{name}{ext}" for name in names for ext in (
    ".json", ".jsonl", "-v1.1.json", "-v2.0.json", ".parquet", "-*.parquet", "/*.parquet"))
    for split, names in {"train": ("train",), "validation": ("validation", "dev", "valid"), "test": ("test",)}.items()}
N_BEST = 20  # start and end candidates per window (HF's n_best_size)
NOT_CONTEXT = -1  # a window's offset where its token is not the context's (question, special tokens, padding)


@dataclasses.dataclass(frozen=True)
class Question:
    id: str
    question: str
    context: str
    answers: tuple[str, ...]  # () for an unanswerable question (SQuAD 2.0), or an unlabelled one
    starts: tuple[int, ...]  # each answer's first character in the context
    place: str  # file:line (or record) for a message


def read(path) -> list[Question]:
    """The questions of one split's file (SQuAD JSON, or records)."""
    path = Path(path)
    if path.suffix == ".json" and "*" not in path.name:
        text = files.read_text_file(path)
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None  # JSON lines under a .json name, as `datasets` writes them
        if isinstance(whole, dict) and "data" in whole:
            return _nested(path, whole["data"])
        rows = files.json_lines(path, text)  # the text already read
    else:
        rows, _ = files.records(path)
    return from_records([(files.place(path, n), {"id": str(n), **row}) for n, row in rows])


def from_records(rows: list[tuple[str, dict]]) -> list[Question]:
    """Questions of (place, record) pairs whose records are the hub's (`id`, `question`, `context`, `answers`)."""
    return [_question(where, row.get("id"), row.get("question"), row.get("context"), row.get("answers"))
            for where, row in rows]


def _nested(path: Path, articles) -> list[Question]:
    """SQuAD's own layout: articles of paragraphs of questions (their place: article, paragraph, question)."""
    out = []
    for a, article in enumerate(articles if isinstance(articles, list) else []):
        for p, paragraph in enumerate(article.get("paragraphs", []) if isinstance(article, dict) else []):
            for q, qa in enumerate(paragraph.get("qas", [])):
                where = f"{path}: data[{a}].paragraphs[{p}].qas[{q}]"
                answers = qa.get("answers", []) if isinstance(qa, dict) else None
                if not isinstance(answers, list) or not all(isinstance(x, dict) for x in answers):
                    raise DataError(f"{where}: answers must be a list of {{text, answer_start}}")
                out.append(_question(where, qa.get("id", where), qa.get("question"), paragraph.get("context"),
                                     {"text": [x.get("text") for x in answers],
                                      "answer_start": [x.get("answer_start") for x in answers]}))
    if not out:
        raise DataError(f"{path}: no questions under data[].paragraphs[].qas[]")
    return out


def _question(where: str, qid, question, context, answers) -> Question:
    """One question, checked: text fields, and each answer at its place in the context."""
    for key, value in (("question", question), ("context", context)):
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{where}: no {key} (each question needs `question` and `context` texts)")
    answers = answers or {"text": [], "answer_start": []}
    texts, starts = answers.get("text"), answers.get("answer_start") if isinstance(answers, dict) else (None, None)
    if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
        raise DataError(f"{where}: answers must be {{\"text\": [...], \"answer_start\": [...]}} of equal length")
    for text, start in zip(texts, starts):
        if not isinstance(text, str) or not text or not isinstance(start, int) or isinstance(start, bool):
            raise DataError(f"{where}: answer {text!r} at {start!r}: an answer is a text and its start (a character "
                            f"index)")
        if context[start: start + len(text)] != text:
            raise DataError(f"{where}: answer {text!r} is not the context's text at answer_start {start} (there: "
                            f"{context[start: start + len(text)]!r})")
    return Question(str(qid), question, context, tuple(texts), tuple(starts), where)


@dataclasses.dataclass(frozen=True)
class Windows:
    """A split's tokenized windows and how they map back: `arrays` (input_ids, attention_mask, token_type_ids,
    labels: (windows, 2) start and end token), `question` (windows,) the question each window reads, `offsets`
    (windows, seq_len, 2) each context token's characters (NOT_CONTEXT elsewhere; None where not kept: a training
    split needs only its labels, and SQuAD's offsets take ~270 MB)."""
    arrays: dict[str, np.ndarray]
    question: np.ndarray
    offsets: np.ndarray | None
    questions: list[Question]


def windows(tokenizer, questions: list[Question], seq_len: int, doc_stride: int = 0, offsets: bool = True) -> Windows:
    """Every question's windows, as run_qa's prepare_train_features / prepare_validation_features (the question
    first, the context cut to fit with `doc_stride` tokens shared by neighbouring windows; 0: seq_len // 3,
    run_qa's 128 of 384), right-padded."""
    doc_stride = checked_stride(tokenizer, questions, seq_len, doc_stride)
    texts = [q.question.lstrip() for q in questions]  # run_qa strips a question's leading spaces
    parts = [_chunk(tokenizer, texts[lo:lo + CHUNK], questions[lo:lo + CHUNK], seq_len, doc_stride, offsets)
             for lo in range(0, len(questions), CHUNK)]
    owner = np.concatenate([part.question + lo for lo, part in zip(range(0, len(questions), CHUNK), parts)])
    return Windows({k: np.concatenate([part.arrays[k] for part in parts]) for k in parts[0].arrays}, owner,
                   np.concatenate([part.offsets for part in parts]) if offsets else None, questions)


CHUNK = 1000  # questions encoded at once: the tokenizer's Python lists of offsets take ~120 kB a question


def checked_stride(tokenizer, questions: list[Question], seq_len: int, doc_stride: int = 0) -> int:
    """`doc_stride` (0: seq_len // 3), checked with the tokenizer and every question: each must leave its context
    more than doc_stride tokens of a window, or the question's place is named."""
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("question answering maps answers to tokens through a fast tokenizer's offsets; this "
                          "tokenizer has none (use a folder with a tokenizer.json)")
    doc_stride = doc_stride or seq_len // 3
    if not 0 < doc_stride < seq_len:
        raise ConfigError(f"data.doc_stride={doc_stride} must be positive and below data.seq_len={seq_len}")
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    for lo in range(0, len(questions), CHUNK):  # run_qa strips a question's leading spaces
        asked = tokenizer([q.question.lstrip() for q in questions[lo:lo + CHUNK]], add_special_tokens=False)
        longest = max(range(len(asked["input_ids"])), key=lambda i: len(asked["input_ids"][i]))
        room = seq_len - len(asked["input_ids"][longest]) - specials  # the context's
        if room <= doc_stride:
            raise DataError(f"{questions[lo + longest].place}: the question takes {seq_len - room} of data.seq_len="
                            f"{seq_len} tokens, leaving {room} for the context, not more than data.doc_stride="
                            f"{doc_stride}; raise data.seq_len or lower data.doc_stride")
    return doc_stride


def _chunk(tokenizer, texts: list[str], questions: list[Question], seq_len: int, doc_stride: int,
           keep_offsets: bool) -> Windows:
    """`windows` of a few questions (their own indices in `question`)."""
    enc = tokenizer(texts, [q.context for q in questions], truncation="only_second",
                    max_length=seq_len, stride=doc_stride, return_overflowing_tokens=True,
                    return_offsets_mapping=True, return_token_type_ids=True)
    owner = np.asarray(enc["overflow_to_sample_mapping"], np.int32)
    offsets = np.full((len(owner), seq_len, 2), NOT_CONTEXT, np.int32)
    labels = np.zeros((len(owner), 2), np.int32)
    for w in range(len(owner)):
        sequence = enc.sequence_ids(w)
        context = [i for i, s in enumerate(sequence) if s == 1]
        offsets[w, context] = np.asarray(enc["offset_mapping"][w], np.int32)[context]
        labels[w] = _span(questions[owner[w]], offsets[w], context, _cls(tokenizer, enc["input_ids"][w]))
    typed = "token_type_ids" in tokenizer.model_input_names
    rows = packing.padded(enc["input_ids"], seq_len, tokenize.pad_id(tokenizer),
                          {"token_type_ids": enc["token_type_ids"]} if typed else None)
    return Windows({**rows, "labels": labels}, owner, offsets if keep_offsets else None, questions)


def _cls(tokenizer, ids: list[int]) -> int:
    """Where a window's 'no answer' points: its [CLS] (<s>) token, the first one without such a token."""
    cls = tokenizer.cls_token_id
    return ids.index(cls) if cls is not None and cls in ids else 0


def _span(question: Question, offsets: np.ndarray, context: list[int], cls: int) -> tuple[int, int]:
    """A window's first and last answer token (run_qa: the first answer); `cls` twice when the window does not
    hold the whole answer, or the question has none."""
    if not question.answers or not context:
        return cls, cls
    first, last = question.starts[0], question.starts[0] + len(question.answers[0])
    if not (offsets[context[0], 0] <= first and offsets[context[-1], 1] >= last):
        return cls, cls
    start = next(i for i in context[::-1] if offsets[i, 0] <= first)
    end = next(i for i in context if offsets[i, 1] >= last)
    return start, end


def _log_softmax(logits: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Log-probabilities over a window's `allowed` positions (its context and [CLS]), as transformers' QA
    pipeline normalises its scores; -inf elsewhere."""
    x = np.where(allowed, logits.astype(np.float64), -np.inf)
    top = x.max()
    return x - top - np.log(np.sum(np.exp(x - top)))


def _trimmed(context: str, a: int, b: int) -> tuple[int, int]:
    """A span without the spaces at its ends (a byte-level BPE token's characters include the space before it)."""
    while a < b and context[a].isspace():
        a += 1
    while b > a and context[b - 1].isspace():
        b -= 1
    return a, b


def answers(w: Windows, start_logits: np.ndarray, end_logits: np.ndarray, max_answer_length: int = 30,
            unanswerable: bool = False, null_threshold: float = 0.0) -> list[dict]:
    """Each question's best answer over its windows, as HF's postprocess_qa_predictions: of each window's N_BEST
    start and end tokens in its context (HF's picks them among all tokens, then drops those outside), the spans
    (end not before start, at most `max_answer_length` tokens) ranked by start + end logit; with `unanswerable`
    (SQuAD 2.0) the answer is "" when the least [CLS] score of its windows beats the best span by more than
    `null_threshold`. Returns [{id, answer, score, start, end}]: `score` the span's probability within its window
    (start x end probability over its context and [CLS], as transformers' QA pipeline reports it), `start`/`end`
    its characters in the context, without spaces at its ends (-1 for ""). With `unanswerable` also
    `null_score_diff` (the least [CLS] score minus the best span's: HF's null_odds.json; None without a span) and
    `best_span` (that span's text, "" without one), which metrics.squad_best_thresholds tunes the threshold by."""
    by_question: list[list[int]] = [[] for _ in w.questions]
    for window, q in enumerate(w.question):
        by_question[q].append(window)
    out = []
    for q, question in enumerate(w.questions):
        best, null = None, None  # (logit score, window, start token, end token); (logit score, window)
        for window in by_question[q]:
            s_logits, e_logits, offsets = start_logits[window], end_logits[window], w.offsets[window]
            score = float(s_logits[0] + e_logits[0])
            null = (score, window) if null is None or score < null[0] else null
            context = offsets[:, 0] != NOT_CONTEXT  # candidates among the context's tokens only
            starts, ends = (np.argsort(np.where(context, x, -np.inf), kind="stable")[-1: -N_BEST - 1: -1]
                            for x in (s_logits, e_logits))
            for s in starts:
                for e in ends:
                    if not (context[s] and context[e]):
                        continue
                    if e < s or e - s + 1 > max_answer_length:
                        continue
                    score = float(s_logits[s] + e_logits[e])
                    if best is None or score > best[0]:
                        best = (score, window, int(s), int(e))
        empty = best is None or (unanswerable and null[0] - best[0] > null_threshold)  # every question has a window
        window, s, e = (null[1], 0, 0) if empty else best[1:]
        allowed = w.offsets[window, :, 0] != NOT_CONTEXT
        allowed[0] = True
        log_p = (_log_softmax(start_logits[window], allowed)[s] + _log_softmax(end_logits[window], allowed)[e])
        span = None if best is None else _trimmed(question.context, int(w.offsets[best[1], best[2], 0]),
                                                  int(w.offsets[best[1], best[3], 1]))
        a, b = (-1, -1) if empty else span
        out.append({"id": question.id, "answer": "" if empty else question.context[a:b],
                    "score": round(float(np.exp(log_p)), 6), "start": a, "end": b})
        if unanswerable:
            out[-1].update(null_score_diff=None if best is None else null[0] - best[0],
                           best_span="" if best is None else question.context[slice(*span)])
    return out
