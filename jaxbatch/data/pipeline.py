"""grain input pipeline: shuffle per epoch, slice per host, batch, and assemble global jax.Arrays.

Every host reads only its slice (`ds[process_index::process_count]`), so global batch j is the same set
of examples whatever the host count. The iterator's state is grain's, saved and restored exactly."""

from __future__ import annotations

import dataclasses
import math

import grain
import jax
import numpy as np

from jaxbatch.data.tokenize import IGNORE_INDEX


class ArraySource:
    """A grain random-access source over a dict of equal-length numpy arrays."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays
        self.n = len(next(iter(arrays.values())))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {k: v[i] for k, v in self.arrays.items()}


def train_dataset(arrays: dict[str, np.ndarray], global_batch: int, num_steps: int, seed: int,
                  process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
    """Local batches (global_batch / process_count examples) for `num_steps` steps, reshuffled every epoch."""
    if global_batch % process_count:
        raise ValueError(f"global batch {global_batch} is not divisible by {process_count} processes")
    n = len(next(iter(arrays.values())))
    if n < global_batch:
        raise ValueError(f"the training split has {n} examples, fewer than one global batch of {global_batch}")
    epochs = math.ceil(num_steps * global_batch / n)
    ds = grain.MapDataset.source(ArraySource(arrays)).shuffle(seed=seed).repeat(epochs)
    ds = ds[: num_steps * global_batch][process_index::process_count]
    return ds.batch(global_batch // process_count, drop_remainder=True).to_iter_dataset()


def eval_batches(arrays: dict[str, np.ndarray], global_batch: int, process_index: int = 0,
                 process_count: int = 1):
    """Fixed-order local batches covering every example once; the last batch is padded with examples whose
    labels are all IGNORE_INDEX (they count nowhere). Yields (local batch, number of real examples)."""
    n = len(next(iter(arrays.values())))
    local = global_batch // process_count
    for start in range(0, n, global_batch):
        real = min(global_batch, n - start)
        batch = {}
        for k, v in arrays.items():
            chunk = v[start: start + global_batch]
            if real < global_batch:
                fill = IGNORE_INDEX if k == "labels" else 0
                chunk = np.concatenate([chunk, np.full((global_batch - real, *v.shape[1:]), fill, v.dtype)])
            batch[k] = chunk[process_index * local: (process_index + 1) * local]
        yield batch, real


def to_global(local_batch: dict[str, np.ndarray], shardings: dict) -> dict[str, jax.Array]:
    """Per-host numpy batch -> global jax.Arrays sharded on the mesh's batch axes."""
    return {k: jax.make_array_from_process_local_data(shardings[k], v) for k, v in local_batch.items()}


@dataclasses.dataclass
class PaddingStats:
    real_tokens: int
    total_tokens: int

    @property
    def padding_fraction(self) -> float:
        return 1 - self.real_tokens / max(self.total_tokens, 1)


def padding_stats(arrays: dict[str, np.ndarray]) -> PaddingStats:
    mask = arrays["attention_mask"]
    return PaddingStats(int(mask.sum()), int(mask.size))
