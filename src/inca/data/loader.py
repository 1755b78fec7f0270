"""Batches of transformed images from a subset, traceable back to the dataset.

Every batch is a ``Batch(pixels (B, 3, S, S) float32, labels (B,) int64, indices (B,) int64)``;
``indices`` are positions into ``subset.dataset``, so a prediction or a cached activation can
always be matched with its image. Everything random is seeded: the shuffle order by ``seed``,
augmentation by ``seed`` in the main process (num_workers=0) or by DataLoader's per-worker seed
(itself drawn from ``seed``), so the same call gives the same batches, epoch after epoch.
"""

from __future__ import annotations

import copy
import os
from typing import NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from inca.data.preprocess import ImageTransform
from inca.data.splits import Subset
from inca.errors import IncaError


class Batch(NamedTuple):
    pixels: torch.Tensor  # (B, 3, S, S) float32, normalised
    labels: torch.Tensor  # (B,) int64
    indices: torch.Tensor  # (B,) int64 positions into the subset's dataset


class _SubsetImages(Dataset):
    """Item j of the subset -> (pixels (3, S, S), label, position in the dataset)."""

    def __init__(self, subset: Subset, transform: ImageTransform, seed: int) -> None:
        if transform.augment and transform.allow_hflip and not subset.dataset.allow_hflip:
            transform = copy.copy(transform)  # the dataset's veto wins: mirrored digits lie
            transform.allow_hflip = False
        self.dataset, self.transform, self.seed = subset.dataset, transform, seed
        self.indices = subset.indices.tolist()  # python ints: cheap to index, pickle, fork
        self.labels = subset.labels.tolist()
        self._generator: torch.Generator | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def _rng(self) -> torch.Generator | None:
        """Augmentation RNG of this process, created on first use (so once per worker)."""
        if not self.transform.augment:
            return None
        if self._generator is None:
            info = get_worker_info()  # in a worker, info.seed = DataLoader base seed + worker id
            self._generator = torch.Generator().manual_seed(
                self.seed if info is None else info.seed
            )
        return self._generator

    def __getitem__(self, j: int) -> tuple[torch.Tensor, int, int]:
        i = self.indices[j]
        return self.transform(self.dataset.load(i), self._rng()), self.labels[j], i

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_generator": None}  # each worker seeds its own


def _collate(items: list[tuple[torch.Tensor, int, int]]) -> Batch:
    pixels, labels, indices = zip(*items, strict=True)
    return Batch(
        torch.stack(pixels),  # (B, 3, S, S)
        torch.tensor(labels, dtype=torch.int64),  # (B,)
        torch.tensor(indices, dtype=torch.int64),  # (B,)
    )


def _init_worker(worker_id: int) -> None:
    torch.set_num_threads(1)  # workers decode and resize; leave the cores' threads to the model


def make_loader(
    subset: Subset,
    transform: ImageTransform,
    batch_size: int = 64,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int | None = None,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader of :class:`Batch` es over ``subset``.

    num_workers: None uses ``min(2, cpu count)`` worker processes (kept alive between epochs);
    0 loads in the calling process. Augmentation streams differ between 0 and >0 workers, but
    each is reproducible. A dataset that forbids mirroring is never flipped, whatever
    ``transform.allow_hflip`` says.
    """
    if len(subset) == 0:
        raise IncaError(f"{subset!r} is empty: nothing to load; check the split sizes")
    if batch_size < 1:
        raise IncaError(f"batch_size must be at least 1, got {batch_size}")
    if num_workers is None:
        num_workers = min(2, os.cpu_count() or 1)
    if num_workers < 0:
        raise IncaError(f"num_workers must be 0 or more, got {num_workers}")
    return DataLoader(
        _SubsetImages(subset, transform, seed),
        batch_size=batch_size,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(seed),
        num_workers=num_workers,
        collate_fn=_collate,
        worker_init_fn=_init_worker if num_workers else None,
        persistent_workers=num_workers > 0,
        drop_last=drop_last,
    )
