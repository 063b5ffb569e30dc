"""Sub-word tokenization of pre-split words with label alignment, through any transformers tokenizer
(the model family's, or a pretrained folder's).

Fixed-length arrays come out: [CLS] tokens [SEP] [PAD]..., or for a tokenizer without [CLS] (a causal
model's) each text as written with the tokenizer's own special tokens (BOS), as Hugging Face's
run_glue gives it. Truncation never happens silently: the number of truncated examples is returned, and the
pipeline reports it."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from jaxbatch.data import packing
from jaxbatch.errors import DataError
from jaxbatch.losses import IGNORE_INDEX


@dataclasses.dataclass
class Encoded:
    arrays: dict[str, np.ndarray]  # input_ids, attention_mask, token_type_ids, labels
    truncated: int  # examples that did not fit seq_len
    cut: np.ndarray | None = None  # text classification: the tokens cut from each example (0: it fits)


def _pack(ids_lists, seq_len: int, cls_id: int, sep_id: int, pad_id: int):
    n = len(ids_lists)
    input_ids = np.full((n, seq_len), pad_id, np.int32)
    mask = np.zeros((n, seq_len), np.int32)
    truncated = 0
    for i, ids in enumerate(ids_lists):
        if len(ids) > seq_len - 2:
            truncated += 1
            ids = ids[: seq_len - 2]
        row = [cls_id, *ids, sep_id]
        input_ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return input_ids, mask, truncated


def for_words(tokenizer):
    """The tokenizer that reads words given one by one (a token task's) as they read inside a text, each after a
    space: a byte-level BPE tokenizer that adds no prefix space loaded again with add_prefix_space=True, as HF's
    run_ner loads those (without it each word would be read as if it began the text); any other (WordPiece,
    SentencePiece, one that adds the space already) as it is."""
    pre = getattr(getattr(tokenizer, "backend_tokenizer", None), "pre_tokenizer", None)
    byte_level = pre is not None and b'"type":"ByteLevel","add_prefix_space":false' in pre.__getstate__()
    if not byte_level or getattr(tokenizer, "add_prefix_space", None) is not False or not tokenizer.name_or_path:
        return tokenizer
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer.name_or_path, add_prefix_space=True)


def tagged_specials(tokenizer) -> int:
    """Special tokens around a tagged sentence: [CLS] and [SEP], or a causal model's own (its BOS, or none)."""
    return 2 if tokenizer.cls_token_id is not None else tokenizer.num_special_tokens_to_add(pair=False)


def encode_tagged(tokenizer, sentences: Sequence[Sequence[str]], tags: Sequence[Sequence[int]], seq_len: int,
                  label_all_subtokens: bool = False) -> Encoded:
    """Token classification: the word's label on its first word piece; later pieces get IGNORE_INDEX
    (or the same label with `label_all_subtokens`). [CLS] pieces [SEP], or for a tokenizer without [CLS] (a
    causal model's) the pieces with its own special tokens (a BOS), as HF's run_ner gives them, padded on the
    right with `pad_id`."""
    own = tokenizer.cls_token_id is None
    enc = tokenizer(list(map(list, sentences)), is_split_into_words=True, add_special_tokens=own)
    ids_lists = enc["input_ids"]
    if own:
        rows = packing.padded([ids[:seq_len] for ids in ids_lists], seq_len, pad_id(tokenizer))
        input_ids, mask = rows["input_ids"], rows["attention_mask"]
        truncated = sum(len(ids) > seq_len for ids in ids_lists)
        first, room = 0, seq_len  # word_ids count the special tokens too (None there)
    else:
        input_ids, mask, truncated = _pack(ids_lists, seq_len, tokenizer.cls_token_id, tokenizer.sep_token_id,
                                           tokenizer.pad_token_id)
        first, room = 1, seq_len - 2  # the pieces lie between [CLS] and [SEP]
    labels = np.full(input_ids.shape, IGNORE_INDEX, np.int32)
    for i in range(len(ids_lists)):
        previous = None
        for j, word in enumerate(enc.word_ids(i)[:room]):
            if word is not None and (word != previous or label_all_subtokens):
                labels[i, j + first] = tags[i][word]
            previous = word
    return Encoded(dict(input_ids=input_ids, attention_mask=mask, token_type_ids=np.zeros_like(input_ids),
                        labels=labels), truncated)


def _label_array(labels) -> np.ndarray:
    """Class ids as int32; regression scores (floats) as float32."""
    labels = np.asarray(labels)
    return labels.astype(np.float32 if np.issubdtype(labels.dtype, np.floating) else np.int32)


def encode_labelled(tokenizer, sentences: Sequence[Sequence[str]], labels: Sequence[int], seq_len: int,
                    pairs: Sequence[Sequence[str]] | None = None) -> Encoded:
    """Sequence classification or regression: one label (class id or score) per example, of a text or of a
    pair of texts (`pairs`: each example's second text)."""
    written = tokenizer.cls_token_id is None
    if pairs or written:
        return _encode_template(tokenizer, sentences, pairs or None, labels, seq_len, written)
    enc = tokenizer(list(map(list, sentences)), is_split_into_words=True, add_special_tokens=False)
    input_ids, mask, truncated = _pack(enc["input_ids"], seq_len, tokenizer.cls_token_id, tokenizer.sep_token_id,
                                       tokenizer.pad_token_id)
    cut = np.maximum(np.asarray([len(ids) for ids in enc["input_ids"]], int) - (seq_len - 2), 0)
    return Encoded(dict(input_ids=input_ids, attention_mask=mask, token_type_ids=np.zeros_like(input_ids),
                        labels=_label_array(labels)), truncated, cut)


def pad_id(tokenizer) -> int:
    """The id padding is written with: the tokenizer's pad token, else its EOS (a causal model's tokenizer
    often has no pad token; Hugging Face's recipes pad with EOS, and a classifier reads the last other one)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise DataError("the tokenizer has neither a pad nor an EOS token to pad texts with; give it a pad token")
    return pad


def _encode_template(tokenizer, firsts, seconds, labels, seq_len: int, written: bool) -> Encoded:
    """Texts or text pairs laid out by the tokenizer's own template (`[CLS] a [SEP] b [SEP]` with token types 0
    then 1, `<s> a </s></s> b </s>`, or a causal model's `<bos> a`), cut longest first to seq_len as Hugging
    Face's GLUE script does, then padded on the right. `written`: each text is given as a string (its words
    joined by spaces, as run_glue reads a file) rather than as words, which a BPE tokenizer would encode
    each with a leading space. Token types only where the tokenizer's models take them
    (`model_input_names`). Each example is encoded whole once; only the ones too long are encoded again, cut."""
    as_given = (lambda ws: " ".join(ws)) if written else list
    firsts = [as_given(ws) for ws in firsts]
    seconds = [as_given(ws) for ws in seconds] if seconds else None

    def encode(rows: list[int], **cut) -> tuple[list, list]:
        enc = tokenizer([firsts[i] for i in rows], [seconds[i] for i in rows] if seconds else None,
                        is_split_into_words=not written, return_token_type_ids=True, **cut)
        return enc["input_ids"], enc["token_type_ids"]

    ids, type_ids = encode(list(range(len(firsts))))
    cut = np.maximum(np.asarray([len(row) for row in ids], int) - seq_len, 0)
    long = [int(i) for i in np.flatnonzero(cut)]
    if long:
        for i, row, row_types in zip(long, *encode(long, truncation="longest_first", max_length=seq_len)):
            ids[i], type_ids[i] = row, row_types
    typed = "token_type_ids" in tokenizer.model_input_names
    rows = packing.padded(ids, seq_len, pad_id(tokenizer), {"token_type_ids": type_ids} if typed else None)
    return Encoded({**rows, "labels": _label_array(labels)}, len(long), cut)
