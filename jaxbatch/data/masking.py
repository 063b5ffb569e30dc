"""Masked language modelling's inputs, as Hugging Face's DataCollatorForLanguageModeling makes them: each
token but the special ones ([CLS], [SEP], padding, ...) is chosen with probability `model.mlm_probability`;
a chosen token becomes the mask token 80% of the time, a random token 10%, and stays itself 10%; the
labels are the chosen tokens' ids (IGNORE_INDEX elsewhere). A row chooses at most losses.mlm_predictions
tokens (the head computes logits at that many positions; a draw passes it with probability < 1e-15, and then
its last choices are dropped, as the original pretraining code caps rows at max_predictions_per_seq).

Training draws new choices for every batch, as the collator does, but from a generator seeded by (train.seed,
step, global row), so a resumed run and any number of hosts mask exactly as one uninterrupted process does.
The validation split is masked once, by data.shuffle_seed, so every evaluation (and `jaxbatch evaluate`)
scores the same positions."""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxbatch.errors import DataError
from jaxbatch.losses import IGNORE_INDEX, mlm_predictions

MASK, RANDOM = 0.8, 0.1  # of the chosen tokens: replaced by the mask token, by a random one (the rest are kept)


@dataclasses.dataclass(frozen=True)
class Masking:
    probability: float
    mask_id: int
    vocab_size: int  # random replacements are drawn from ids [0, vocab_size), as the collator's len(tokenizer)
    special: tuple[int, ...]  # ids never chosen (the tokenizer's special tokens)

    @classmethod
    def of(cls, tokenizer, probability: float) -> "Masking":
        if getattr(tokenizer, "mask_token_id", None) is None:
            raise DataError("masked language modelling needs a tokenizer with a mask token ([MASK], <mask>): set "
                            "data.tokenizer or model.pretrained to an encoder's folder")
        return cls(probability, int(tokenizer.mask_token_id), len(tokenizer),
                   tuple(sorted(int(i) for i in tokenizer.all_special_ids)))

    def candidates(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Rows with `labels` holding every token that may be chosen (its own id): what `apply` draws from."""
        ids = rows["input_ids"]
        maskable = rows["attention_mask"].astype(bool) & ~np.isin(ids, self.special)
        return {**rows, "labels": np.where(maskable, ids, IGNORE_INDEX).astype(np.int32)}

    def apply(self, batch: dict[str, np.ndarray], keys: list[tuple[int, ...]]) -> dict[str, np.ndarray]:
        """`batch` (its labels from `candidates`) masked, row i by a generator seeded with keys[i]."""
        ids, length = batch["input_ids"], batch["input_ids"].shape[1]
        gens = [np.random.default_rng(list(key)) for key in keys]
        u = np.stack([g.random(length) for g in gens]) / self.probability  # < 1: chosen; then which replacement
        random_ids = np.stack([g.integers(0, self.vocab_size, length) for g in gens])
        chosen = (batch["labels"] != IGNORE_INDEX) & (u < 1)
        chosen &= np.cumsum(chosen, 1) <= mlm_predictions(length, self.probability)
        inputs = np.where(chosen & (u < MASK), self.mask_id,
                          np.where(chosen & (u >= MASK) & (u < MASK + RANDOM), random_ids, ids))
        return {**batch, "input_ids": inputs.astype(ids.dtype),
                "labels": np.where(chosen, ids, IGNORE_INDEX).astype(np.int32)}

    def train_batch(self, seed: int):
        """mask(batch, step, global rows) for the training pipeline: keys (seed, 0, step, row)."""
        def mask(batch, step: int, rows) -> dict[str, np.ndarray]:
            return self.apply(batch, [(seed, 0, step, int(r)) for r in rows])

        return mask

    def eval_split(self, rows: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
        """A validation split masked once: keys (seed, 1, row)."""
        return self.apply(self.candidates(rows), [(seed, 1, r) for r in range(len(rows["input_ids"]))])
