"""Masked language modelling's inputs, as Hugging Face's DataCollatorForLanguageModeling makes them: each
token but the special ones ([CLS], [SEP], padding, ...) is chosen with probability `model.mlm_probability`
(with `model.mlm_whole_word_mask`, each word's first token is, and a chosen word is chosen whole); a chosen token
becomes the mask token with probability `model.mlm_mask_replace_prob` (0.8), a random token with
`model.mlm_random_replace_prob` (0.1), and stays itself otherwise; the labels are the chosen tokens' ids
(IGNORE_INDEX elsewhere). A row chooses at most losses.mlm_predictions tokens (the head computes logits at that
many positions; a draw passes it with probability < 1e-15, and then its last choices are dropped, as the
original pretraining code caps rows at max_predictions_per_seq).

Training draws new choices for every batch, as the collator does, but from a generator seeded by (train.seed,
step, global row), so a resumed run and any number of hosts mask exactly as one uninterrupted process does.
The validation split is masked once, by data.shuffle_seed, so every evaluation (and `jaxbatch evaluate`)
scores the same positions."""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxbatch.data import packing
from jaxbatch.errors import DataError
from jaxbatch.losses import IGNORE_INDEX, mlm_predictions

WORD_STARTS = "word_starts"  # whole-word masking: 1 where a token begins a word (a row array beside the tokens)


@dataclasses.dataclass(frozen=True)
class Masking:
    probability: float
    mask_id: int
    vocab_size: int  # random replacements are drawn from ids [0, vocab_size), as the collator's len(tokenizer)
    special: tuple[int, ...]  # ids never chosen (the tokenizer's special tokens)
    replace_mask: float = 0.8  # of the chosen tokens: shown as the mask token
    replace_random: float = 0.1  # ... as a random token (the rest as themselves)
    whole_words: bool = False

    @classmethod
    def of(cls, tokenizer, model_cfg) -> "Masking":
        """The masking `model_cfg`'s mlm_* keys ask for, with `tokenizer`'s mask token and special tokens."""
        if getattr(tokenizer, "mask_token_id", None) is None:
            raise DataError("masked language modelling needs a tokenizer with a mask token ([MASK], <mask>): set "
                            "data.tokenizer or model.pretrained to an encoder's folder")
        if model_cfg.mlm_whole_word_mask and not getattr(tokenizer, "is_fast", False):
            raise DataError("model.mlm_whole_word_mask finds words by the tokenizer's character offsets, which only "
                            "a fast (tokenizers) tokenizer gives")
        return cls(model_cfg.mlm_probability, int(tokenizer.mask_token_id), len(tokenizer),
                   tuple(sorted(int(i) for i in tokenizer.all_special_ids)), model_cfg.mlm_mask_replace_prob,
                   model_cfg.mlm_random_replace_prob, model_cfg.mlm_whole_word_mask)

    def encode(self, tokenizer, texts: list[str]) -> list[tuple[list[int], list[int] | None]]:
        """Each text's ids with its special tokens (the texts encoded in one call: a fast tokenizer's batch
        encoding runs in parallel), and where its words start (whole-word masking; else None): a token that is
        not special and follows a gap in the text or a special token, as the collator reads the tokenizer's
        offsets (so "don't" and "people," are one word each)."""
        if not texts:
            return []
        enc = tokenizer(texts, return_offsets_mapping=self.whole_words, return_attention_mask=False,
                        return_token_type_ids=False)
        if not self.whole_words:
            return [(ids, None) for ids in enc["input_ids"]]
        out = []
        for ids, offsets in zip(enc["input_ids"], enc["offset_mapping"]):
            starts, previous_end, previous_special = [], -1, False
            for token, (start, end) in zip(ids, offsets):
                special = token in self.special
                starts.append(int(not special and (start != previous_end or previous_special)))
                previous_end, previous_special = end, special
            out.append((ids, starts))
        return out

    def describe(self, mask_token: str) -> str:
        """The start line's account of the masking."""
        what = "words (their first token drawn)" if self.whole_words else "tokens"
        kept = max(0.0, round(100 * (1 - self.replace_mask - self.replace_random), 6))
        return (f"{100 * self.probability:g}% of the {what} chosen anew in each batch ({100 * self.replace_mask:g}% "
                f"shown as {mask_token}, {100 * self.replace_random:g}% random, {kept:g}% kept); validation "
                f"masked once (data.shuffle_seed)")

    def candidates(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Rows with `labels` holding every token that may be chosen (its own id): what `apply` draws from."""
        ids = rows["input_ids"]
        maskable = rows["attention_mask"].astype(bool) & ~np.isin(ids, self.special)
        return {**rows, "labels": np.where(maskable, ids, IGNORE_INDEX).astype(np.int32)}

    def apply(self, batch: dict[str, np.ndarray], keys: list[tuple[int, ...]]) -> dict[str, np.ndarray]:
        """`batch` (its labels from `candidates`) masked, row i by a generator seeded with keys[i]."""
        ids, length = batch["input_ids"], batch["input_ids"].shape[1]
        gens = [np.random.default_rng(list(key)) for key in keys]
        drawn = np.stack([g.random(length) for g in gens]) < self.probability
        how = np.stack([g.random(length) for g in gens])  # < replace_mask: the mask token; then a random one
        random_ids = np.stack([g.integers(0, self.vocab_size, length) for g in gens])
        candidate = batch["labels"] != IGNORE_INDEX
        chosen = candidate & drawn
        if self.whole_words:  # a word is chosen by its first token's draw (a row's first token starts one)
            starts = candidate & (batch[WORD_STARTS].astype(bool) | (np.arange(length) == 0))
            first = np.maximum.accumulate(np.where(starts, np.arange(length), -1), axis=1)  # its word's start
            chosen = candidate & (first >= 0) & np.take_along_axis(starts & drawn, np.maximum(first, 0), axis=1)
        chosen &= np.cumsum(chosen, 1) <= mlm_predictions(length, self.probability)
        shown_random = chosen & (how >= self.replace_mask) & (how < self.replace_mask + self.replace_random)
        inputs = np.where(chosen & (how < self.replace_mask), self.mask_id, np.where(shown_random, random_ids, ids))
        return {**batch, "input_ids": inputs.astype(ids.dtype),
                "labels": np.where(chosen, ids, IGNORE_INDEX).astype(np.int32)}

    def train_batch(self, seed: int):
        """mask(batch, step, global rows) for the training pipeline: keys (seed, 0, step, row)."""
        def mask(batch, step: int, rows) -> dict[str, np.ndarray]:
            return self.apply(batch, [(seed, 0, step, int(r)) for r in rows])

        return mask



class Masked(packing.Rows):
    """A split's rows (packing.Grouped) with `labels`: every token the masks may choose (training's, masked anew
    in each batch: Masking.train_batch), or, given `seed`, the split masked once by keys (seed, 1, row)
    (validation's: every evaluation scores the same positions). Computed as the rows are read, as theirs are."""

    def __init__(self, how: Masking, rows: packing.Rows, seed: int | None = None):
        super().__init__((*rows, "labels"), rows.num_rows, rows.seq_len)
        self.how, self.laid, self.seed = how, rows, seed

    def compute(self, which: np.ndarray) -> dict[str, np.ndarray]:
        out = self.how.candidates(self.laid.rows(which))
        return out if self.seed is None else self.how.apply(out, [(self.seed, 1, int(r)) for r in which])
