"""Packing documents into fixed-length rows for language-model training (as T5 and MaxText do).

Each row holds `seq_len + 1` tokens from one or more documents; `segment_ids` number the documents in a
row (0 = padding) and `positions` restart at 0 for each, so attention never crosses a document and
learned/rotary positions see each document from its start. A document longer than the room left
continues in the next row as a new segment. Inputs are row[:-1], targets row[1:]; a target is real only
where it continues the same document, so no loss is taken across a boundary or on padding, nor on the
tokens a document only reads (`trained`: supervised fine-tuning trains on completions and assistant turns,
not on prompts).

The documents are kept end to end (`stream`: 2 bytes a token while ids fit in 16 bits) and `Packed` computes
each row from them when it is read, so a corpus' rows (16 bytes a token) are never held or stored; `pack` gives
them in memory. An encoder's rows (masked language modelling) are read from a stream the same way (`Grouped`):
cut every seq_len tokens as run_mlm.py groups texts, or a document a row.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import numpy as np

from jaxbatch.losses import IGNORE_INDEX


def stream(documents, trained=None, alloc=None, dtype=None, marks=None) -> dict[str, np.ndarray]:
    """What rows are computed from (`Packed`, `Grouped`): the documents' `tokens` end to end (uint16 while the ids
    fit, 2 bytes a token, else int32), where each document `begins` in them, and, when some token is only read,
    whether each is a target (`targets`, a bit a token; `trained[i][j]` for document i's token j, `trained[i]` None
    when all of them are). `marks`: {name: per document, a 0/1 per token (None: all 1)}, each kept as bits under
    its name (e.g. where words start). 16 bytes a token as rows; 2-3 this way. `alloc(name, shape, dtype)` gives
    the arrays to fill (default: in memory; the token cache's are files on disk). The documents are read one at a
    time (a sequence that makes each when asked serves: tasks' encoded corpora); `dtype`: the ids' (from the
    vocabulary's size), else found from them."""
    alloc = alloc or (lambda name, shape, dtype: np.empty(shape, dtype))
    lengths = np.fromiter((len(doc) for doc in documents), np.int64, len(documents))
    n = int(lengths.sum())
    if dtype is None:
        top = max((int(np.max(doc)) for doc in documents if len(doc)), default=0)
        dtype = np.uint16 if top < 1 << 16 else np.int32
    out = {"tokens": _end_to_end(documents, alloc("tokens", (n,), dtype)),
           "begins": np.cumsum(lengths) - lengths}
    if trained is not None and not all(t is None or np.all(t) for t in trained):
        marks = {**(marks or {}), "targets": trained}
    for name, per_document in (marks or {}).items():
        out[name] = _packed_bits((np.ones(k, bool) if m is None else m for k, m in zip(lengths, per_document)),
                                 alloc(name, (-(-n // 8),), np.uint8))
    return out


def _packed_bits(pieces, out: np.ndarray, block: int = 1 << 23) -> np.ndarray:
    """0/1 pieces (an iterable) end to end as np.packbits gives them, written into `out` about `block` bits at a
    time (never a bool a token of the whole corpus at once)."""
    pending, held, at = [], 0, 0
    for piece in itertools.chain(pieces, [None]):
        if piece is not None:
            pending.append(np.asarray(piece, bool))
            held += len(piece)
        if held >= block or (piece is None and held):
            bits = np.concatenate(pending)
            whole = len(bits) if piece is None else len(bits) // 8 * 8  # the last byte padded, as packbits pads
            packed = np.packbits(bits[:whole])
            out[at: at + len(packed)] = packed
            at += len(packed)
            pending, held = [bits[whole:]], len(bits) - whole
    return out


def _bits(bits: np.ndarray, at: np.ndarray) -> np.ndarray:
    """The bits (np.packbits') at places `at`, as 0/1."""
    return np.asarray(bits[at >> 3]) >> (7 - (at & 7)) & 1


class Rows(Mapping):
    """Arrays of (num_rows, seq_len) int32 named `names`, each read like an array (`_Column`), their rows computed
    when read (`compute`): a corpus' rows never need to be in memory, or on disk, at once."""

    def __init__(self, names: tuple[str, ...], num_rows: int, seq_len: int):
        self.names, self.num_rows, self.seq_len = names, num_rows, seq_len
        self._last = None  # the rows read last: a batch reads its rows once per array

    def __getitem__(self, key: str) -> "_Column":
        if key not in self.names:
            raise KeyError(key)
        return _Column(self, key)

    def __iter__(self):
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def rows(self, which: np.ndarray) -> dict[str, np.ndarray]:
        """Rows `which` (row numbers, int64) of each array."""
        token = which.tobytes()
        if self._last is None or self._last[0] != token:
            self._last = (token, self.compute(which))
        return self._last[1]

    def compute(self, which: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError


KEYS = ("input_ids", "labels", "segment_ids", "positions")  # a Packed's arrays


class Packed(Rows):
    """Rows of `seq_len + 1` tokens of the documents end to end (`stream`'s arrays) as {input_ids, labels,
    segment_ids, positions}: a decoder's rows."""

    def __init__(self, arrays: dict[str, np.ndarray], seq_len: int, pad_id: int = 0):
        self.tokens, self.begins, self.bits = arrays["tokens"], np.asarray(arrays["begins"]), arrays.get("targets")
        self.pad_id = pad_id
        super().__init__(KEYS, -(-len(self.tokens) // (seq_len + 1)), seq_len)

    def compute(self, which: np.ndarray) -> dict[str, np.ndarray]:
        width, n, begins = self.seq_len + 1, len(self.tokens), self.begins
        first = which.astype(np.int64)[:, None] * width
        place = first + np.arange(width)  # each row's tokens' places in the stream
        real = place < n
        tokens = np.where(real, np.asarray(self.tokens[np.minimum(place, max(n - 1, 0))]) if n else 0,
                          self.pad_id).astype(np.int32)
        # segments: a row numbers its documents from 1 (2 when a document starts the row: the one before it closed
        # the previous row), each document start (an empty document's too) one more; padding is 0
        after = np.searchsorted(begins, place, "right")  # (begins is memory-mapped: never copied whole)
        segments = (after - np.searchsorted(begins, first, "left") + (first > 0)).astype(np.int32)
        segments[~real] = 0
        # positions count from the latest change of segment in the row: a document's start, the padding's start
        latest = np.where(real, begins[np.maximum(after - 1, 0)] if len(begins) else 0, n)
        positions = (place - np.maximum(latest, first)).astype(np.int32)
        target = real[:, 1:]
        if self.bits is not None:
            at = np.minimum(place[:, 1:], max(n - 1, 0))
            target &= _bits(self.bits, at).astype(bool)
        same = (segments[:, 1:] == segments[:, :-1]) & (segments[:, 1:] > 0) & target
        return {"input_ids": tokens[:, :-1], "labels": np.where(same, tokens[:, 1:], IGNORE_INDEX).astype(np.int32),
                "segment_ids": segments[:, :-1], "positions": positions[:, :-1]}


class Grouped(Rows):
    """An encoder's rows of `seq_len` tokens from the documents end to end (`stream`'s arrays, each document with
    its special tokens, e.g. [CLS] ... [SEP]): {input_ids, attention_mask, token_type_ids} and each of the stream's
    marks (0/1, 0 in padding). The stream is cut every seq_len tokens, as Hugging Face's run_mlm.py groups texts
    (an encoder attends across the documents of a row, as there; the last row is padded: run_mlm drops it, no text
    is lost here), or, `per_document`, each document (at most seq_len tokens) is a row of its own, padded on the
    right (run_mlm's --line_by_line)."""

    def __init__(self, arrays: dict[str, np.ndarray], seq_len: int, pad_id: int = 0, per_document: bool = False):
        self.tokens, self.begins = arrays["tokens"], np.asarray(arrays["begins"])
        self.marks = {k: v for k, v in arrays.items() if k not in ("tokens", "begins")}
        self.pad_id, self.per_document = pad_id, per_document
        rows = len(self.begins) if per_document else -(-len(self.tokens) // seq_len)
        super().__init__(("input_ids", "attention_mask", "token_type_ids", *self.marks), rows, seq_len)

    def compute(self, which: np.ndarray) -> dict[str, np.ndarray]:
        n = len(self.tokens)
        if self.per_document:
            first, last = self.begins[which], len(self.begins) - 1
            length = np.where(which < last, self.begins[np.minimum(which + 1, last)], n) - first
        else:
            first = which * self.seq_len
            length = n - first
        real = np.arange(self.seq_len) < length[:, None]
        at = np.where(real, first[:, None] + np.arange(self.seq_len), 0)
        ids = np.where(real, np.asarray(self.tokens[at]) if n else 0, self.pad_id).astype(np.int32)
        return {"input_ids": ids, "attention_mask": real.astype(np.int32), "token_type_ids": np.zeros_like(ids),
                **{k: np.where(real, _bits(bits, at) if n else 0, 0).astype(np.int32)
                   for k, bits in self.marks.items()}}


class _Column(np.lib.mixins.NDArrayOperatorsMixin):
    """One of a `Rows`' arrays: indexed by rows (and columns) as a numpy array is, its rows computed then."""

    dtype, ndim = np.dtype(np.int32), 2

    def __init__(self, packed: Rows, key: str):
        self.packed, self.key = packed, key
        self.shape = (packed.num_rows, packed.seq_len)
        self.size = self.shape[0] * self.shape[1]

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        if isinstance(index, np.ndarray) and index.ndim > 1:  # an element mask, rows of rows: of the whole array
            return np.asarray(self)[index]
        rows, cols = index if isinstance(index, tuple) else (index, slice(None))
        n = self.shape[0]
        which = np.arange(*rows.indices(n)) if isinstance(rows, slice) else np.asarray(rows)
        if which.dtype == bool:
            which = np.arange(n)[which]  # numpy checks the mask's length
        elif which.size and (which.min() < -n or which.max() >= n):
            raise IndexError(f"row index out of bounds for {n} rows")
        which = np.where(which < 0, which + n, which)  # from the end
        out = self.packed.rows(np.atleast_1d(which).astype(np.int64))[self.key]
        return out[:, cols] if np.ndim(which) else out[0, cols]

    def __array__(self, dtype=None, copy=None):
        blocks = [self[start: start + 4096] for start in range(0, self.shape[0], 4096)]
        out = np.concatenate(blocks) if blocks else np.empty(self.shape, np.int32)
        return out if dtype is None else out.astype(dtype)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        inputs = [np.asarray(x) if isinstance(x, _Column) else x for x in inputs]
        return getattr(ufunc, method)(*inputs, **kwargs)

    def __getattr__(self, name: str):
        """Whatever else an array has (tolist, ravel, sum, ...), of the whole array (not numpy's own protocols:
        __array_interface__ and the like are looked up here before __array__)."""
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(np.asarray(self), name)


def pack(documents, seq_len: int, pad_id: int = 0, trained=None) -> dict[str, np.ndarray]:
    """`Packed`'s arrays of the documents (token id lists or arrays), in memory."""
    return {k: np.asarray(v) for k, v in Packed(stream(documents, trained), seq_len, pad_id).items()}


def _end_to_end(documents, out: np.ndarray) -> np.ndarray:
    """The documents (lists or arrays, an iterable) end to end, written into `out` (their length in all) one at a
    time."""
    at = 0
    for doc in documents:
        out[at: at + len(doc)] = doc
        at += len(doc)
    return out


def padded(documents: list[list[int]], seq_len: int, pad_id: int = 0,
           per_token: dict[str, list[list[int]]] | None = None) -> dict[str, np.ndarray]:
    """{input_ids, attention_mask, token_type_ids}, each (rows, seq_len) int32: each document (at most seq_len
    tokens) in a row of its own, padded on the right, as a tokenizer pads texts (`per_token`, e.g. token types,
    replaces the zero token types)."""
    def rows_of(docs: list[list[int]], fill: int) -> np.ndarray:
        out = np.full((len(docs), seq_len), fill, np.int32)
        for i, doc in enumerate(docs):
            out[i, : len(doc)] = doc
        return out

    ids = rows_of(documents, pad_id)
    return {"input_ids": ids, "attention_mask": rows_of([[1] * len(doc) for doc in documents], 0),
            "token_type_ids": np.zeros_like(ids), **{k: rows_of(v, 0) for k, v in (per_token or {}).items()}}
