"""Normalised tokens of taps whose shapes differ: a CNN's stages (H·W tokens of width C).

A ViT's taps all give (B, T, D), so a batch of them is one tensor (n_taps, B, T, D) that the
adapters index, slice and pool in batched matmuls. A convolutional backbone's taps differ in
both token count and width (EfficientNet-Lite0: 56² tokens of 24 channels, ..., 7² of 320), so
``stack_taps`` gives them as a ``TapBatch`` instead: the same indexing by tap, one tensor per
tap. Code that reads taps one by one works on either; the adapter bank groups taps of one
shape where it batches.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor


class TapBatch:
    """Per tap i, normalised tokens (B, T_i, D_i): ``batch[i]`` as for a stacked tensor."""

    def __init__(self, tensors: Sequence[Tensor]) -> None:
        self.tensors = list(tensors)

    def __getitem__(self, i: int) -> Tensor:
        return self.tensors[i]

    def __len__(self) -> int:
        return len(self.tensors)

    def __iter__(self) -> Iterator[Tensor]:
        return iter(self.tensors)

    def to(self, *args, **kwargs) -> TapBatch:  # noqa: ANN002, ANN003
        return TapBatch([t.to(*args, **kwargs) for t in self.tensors])

    @property
    def dtype(self) -> torch.dtype:
        return self.tensors[0].dtype

    @property
    def batch_size(self) -> int:
        return self.tensors[0].shape[0]

    def shapes(self) -> list[tuple[int, int]]:
        """(T_i, D_i) per tap."""
        return [tuple(t.shape[1:]) for t in self.tensors]  # type: ignore[misc]

    def stacked(self, taps: Sequence[int]) -> Tensor:
        """Taps ``taps`` (of one shape) as one tensor (n, B, T, D): a copy."""
        return torch.stack([self.tensors[i] for i in taps])


def same_shape(x: Tensor | TapBatch, taps: Sequence[int]) -> bool:
    """Whether taps ``taps`` of ``x`` give tokens of one shape (a stacked tensor always does)."""
    if isinstance(x, Tensor):
        return True
    return len({x.tensors[i].shape for i in taps}) <= 1


def select_taps(x: Tensor | TapBatch, taps: Sequence[int]) -> Tensor:
    """Taps ``taps`` of ``x``, all of one shape, as (n, B, T, D): a view for a run of
    consecutive taps of a stacked tensor, else a copy."""
    if isinstance(x, TapBatch):
        return x.stacked(taps)
    first = taps[0]
    if list(taps) == list(range(first, first + len(taps))):
        return x[first : first + len(taps)]
    return x[list(taps)]
