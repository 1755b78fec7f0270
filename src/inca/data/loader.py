"""Batches of transformed images from a subset, traceable back to the dataset.

Every batch is a ``Batch(pixels (B, 3, S, S) float32, labels (B,) int64, indices (B,) int64)``;
``indices`` are positions into ``subset.dataset``, so a prediction or a cached activation can
always be matched with its image. Everything random is seeded: the shuffle order by ``seed``,
each image's augmentation by ``seed`` and the image's position in its dataset (whatever the worker
count), so the same call gives the same batches, epoch after epoch.
"""

from __future__ import annotations

import copy
import os
from typing import NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset

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

    def __len__(self) -> int:
        return len(self.indices)

    def _rng(self, i: int) -> torch.Generator | None:
        """The augmentation RNG of dataset image ``i`` in this loader: seeded by the loader's
        seed and the image alone, so an image gets the same crop whatever the worker count,
        the batch it lands in, or where an interrupted cache build resumed."""
        if not self.transform.augment:
            return None
        return torch.Generator().manual_seed((self.seed * 1_000_003 + i) % 2**63)

    def __getitem__(self, j: int) -> tuple[torch.Tensor, int, int]:
        i = self.indices[j]
        return self.transform(self.dataset.load(i), self._rng(i)), self.labels[j], i


def _collate(items: list[tuple[torch.Tensor, int, int]]) -> Batch:
    pixels, labels, indices = zip(*items, strict=True)
    return Batch(
        torch.stack(pixels),  # (B, 3, S, S)
        torch.tensor(labels, dtype=torch.int64),  # (B,)
        torch.tensor(indices, dtype=torch.int64),  # (B,)
    )


def _init_worker(worker_id: int) -> None:
    torch.set_num_threads(1)  # workers decode and resize; leave the cores' threads to the model


def default_workers() -> int:
    """Loader processes when none are asked for: none on two cores or fewer, else two.

    On two cores the model's threads fill both during the backbone and the adapters' steps;
    a worker can only take a core from one of them, and decoding costs the same CPU time
    wherever it runs. Measured on this project's 2-core machine (DINOv2-S at 112 px, 512
    Fashion-MNIST images, one online epoch, the best of two): 5.7 s for 16 adapters and 6.8 s
    for 64 with no workers (+20%), 6.4 s and 9.1 s with two (+42%; the same with the workers
    at the lowest priority)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return 0 if (cores or 1) <= 2 else 2


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

    num_workers: None uses ``default_workers()`` worker processes (kept alive between epochs);
    0 loads in the calling process. Augmentation depends on ``seed`` and each image only, not on
    the worker count. A dataset that forbids mirroring is never flipped, whatever
    ``transform.allow_hflip`` says.
    """
    if len(subset) == 0:
        raise IncaError(f"{subset!r} is empty: nothing to load; check the split sizes")
    if batch_size < 1:
        raise IncaError(f"batch_size must be at least 1, got {batch_size}")
    if num_workers is None:
        num_workers = default_workers()
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
