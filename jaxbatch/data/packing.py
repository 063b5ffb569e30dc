"""Packing documents into fixed-length rows for language-model training (as T5 and MaxText do).

Each row holds `seq_len + 1` tokens from one or more documents; `segment_ids` number the documents in a
row (0 = padding) and `positions` restart at 0 for each, so attention never crosses a document and
learned/rotary positions see each document from its start. A document longer than the room left
continues in the next row as a new segment. Inputs are row[:-1], targets row[1:]; a target is real only
where it continues the same document, so no loss is taken across a boundary or on padding, nor on the
tokens a document only reads (`trained`: supervised fine-tuning trains on completions and assistant turns,
not on prompts).
"""

from __future__ import annotations

import numpy as np

from jaxbatch.losses import IGNORE_INDEX


def pack(documents, seq_len: int, pad_id: int = 0, trained=None, alloc=None,
         chunk_rows: int = 1024) -> dict[str, np.ndarray]:
    """{input_ids, labels, segment_ids, positions}, each (rows, seq_len) int32. `documents`: token id lists or
    arrays; `trained[i][j]`: whether document i's token j is a target (all of them when not given). The documents
    are one flat array (~5 bytes a token; Python lists of them took ~100); the rows are laid `chunk_rows` at a
    time into arrays from `alloc(name, shape, dtype)` (default: in memory; the token cache's are files on disk,
    so a corpus' rows never need to fit in memory at once)."""
    width = seq_len + 1
    lengths = np.asarray([len(doc) for doc in documents], np.int64)
    n = int(lengths.sum())
    tokens = _end_to_end(documents, width, pad_id, np.int32)
    targets = _end_to_end(trained, width, False, bool) if trained else np.arange(tokens.size) < n
    rows = tokens.size // width
    begins = np.cumsum(lengths) - lengths  # where each document starts in the flat array (in order)
    alloc = alloc or (lambda name, shape, dtype: np.empty(shape, dtype))
    out = {k: alloc(k, (rows, seq_len), np.int32) for k in ("input_ids", "labels", "segment_ids", "positions")}
    for first in range(0, rows, chunk_rows):
        last = min(rows, first + chunk_rows)
        span = slice(first * width, last * width)
        # segments: a row numbers its documents from 1 (2 when a document starts the row: the one before it closed
        # the previous row), each document start (an empty document's too) one more
        starts = np.zeros((last - first) * width, np.int32)
        inside = begins[np.searchsorted(begins, span.start):np.searchsorted(begins, span.stop)]
        np.add.at(starts, inside - span.start, 1)
        s = np.cumsum(starts.reshape(-1, width), 1, dtype=np.int32) + (np.arange(first, last) > 0)[:, None]
        s.reshape(-1)[max(0, n - span.start):] = 0
        t, target = tokens[span].reshape(-1, width), targets[span].reshape(-1, width)[:, 1:]
        positions = np.zeros_like(s)
        for j in range(1, width):  # position within its segment
            positions[:, j] = np.where(s[:, j] == s[:, j - 1], positions[:, j - 1] + 1, 0)
        same = (s[:, 1:] == s[:, :-1]) & (s[:, 1:] > 0) & target
        out["input_ids"][first:last] = t[:, :-1]
        out["labels"][first:last] = np.where(same, t[:, 1:], IGNORE_INDEX)
        out["segment_ids"][first:last] = s[:, :-1]
        out["positions"][first:last] = positions[:, :-1]
    return out


def _end_to_end(documents, width: int, fill, dtype) -> np.ndarray:
    """The documents (lists or arrays) end to end in one flat array, written in place, padded with `fill` to a
    whole number of `width`s."""
    n = sum(len(doc) for doc in documents)
    out = np.full(-(-n // width) * width, fill, dtype)
    if n:
        np.concatenate([np.asarray(doc, dtype).reshape(-1) for doc in documents if len(doc)], out=out[:n])
    return out


def padded(documents: list[list[int]], seq_len: int, pad_id: int = 0,
           per_token: dict[str, list[list[int]]] | None = None) -> dict[str, np.ndarray]:
    """concatenated's arrays with each document (at most seq_len tokens) in a row of its own, padded on the right,
    as run_mlm.py's --line_by_line gives each line and a tokenizer pads texts (`per_token`, e.g. token types,
    replaces the zero token types)."""
    def rows_of(docs: list[list[int]], fill: int) -> np.ndarray:
        out = np.full((len(docs), seq_len), fill, np.int32)
        for i, doc in enumerate(docs):
            out[i, : len(doc)] = doc
        return out

    ids = rows_of(documents, pad_id)
    return {"input_ids": ids, "attention_mask": rows_of([[1] * len(doc) for doc in documents], 0),
            "token_type_ids": np.zeros_like(ids), **{k: rows_of(v, 0) for k, v in (per_token or {}).items()}}


def concatenated(documents, seq_len: int, pad_id: int = 0, per_token: dict | None = None) -> dict[str, np.ndarray]:
    """{input_ids, attention_mask, token_type_ids}, each (rows, seq_len) int32: the documents (each with its own
    special tokens, e.g. [CLS] ... [SEP]) end to end, cut every seq_len tokens, as Hugging Face's run_mlm.py
    groups texts for masked language modelling. The last row is padded (run_mlm drops it: no text is lost here).
    An encoder attends across the documents of a row, as there. `per_token`: more values per document token
    (e.g. where words start), laid out as the tokens are (0 in padding). Documents: token id lists or arrays."""
    def rows_of(docs, fill: int) -> np.ndarray:
        return _end_to_end(docs, seq_len, fill, np.int32).reshape(-1, seq_len)

    ids = rows_of(documents, pad_id)
    real = rows_of([np.ones(len(doc), np.int32) for doc in documents], 0)
    return {"input_ids": ids, "attention_mask": real, "token_type_ids": np.zeros_like(ids),
            **{k: rows_of(v, 0) for k, v in (per_token or {}).items()}}
