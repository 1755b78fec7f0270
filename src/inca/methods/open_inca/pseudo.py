"""Pseudo old-class samples, so new classes learn from new data alone not to fire on old ones.

Without old images a new class's unit only ever sees new classes, and scores high on anything
unlike them: the old classes then lose every image (measured: 21% over 10 classes after 5 steps,
where joint training reaches ~86%). The task stores each class's mean normalised token map at
the tap (T x D numbers; no image is kept). A training image x of class y becomes a pseudo image
of old class o by moving its tokens from y's mean to o's::

    x_o = x - mean_y + mean_o

(FeTrIL's translation, Petit et al., WACV 2023, here on token maps: the backbone is frozen, so
stored means stay valid forever). The new classes then train against the old classes' frozen
logits on these pseudo images, and validation holds pseudo old images too, so the best rate is
the one that keeps old classes too, not only the one that learns the new ones best.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from inca.errors import IncaError


def class_means(source: Any, classes: range, split: str = "train") -> Tensor:
    """Mean normalised token map of each of ``classes`` over ``source``'s ``split`` (task labels):
    batches (1, B, T, D) -> (len(classes), T, D). A class without images is refused."""
    sums: Tensor | None = None
    counts = torch.zeros(len(classes))
    for x, y in source.evaluate(split):
        tokens = x[0].float().cpu()  # (B, T, D)
        if sums is None:
            sums = torch.zeros(len(classes), *tokens.shape[1:])
        for j, c in enumerate(classes):
            rows = y == c
            if rows.any():
                sums[j] += tokens[rows].sum(0)
                counts[j] += int(rows.sum())
    if sums is None or not bool((counts > 0).all()):
        empty = [c for c, n in zip(classes, counts.tolist(), strict=True) if n == 0]
        raise IncaError(f"no {split} images of class(es) {empty} to average; give some")
    return sums / counts.view(-1, 1, 1)


class PseudoOldSource:
    """``source`` (labels: old classes 0..old-1, then new ones), each training and validation
    batch followed by one pseudo old-class image per real image (a random old class, seeded);
    the test split is real images only."""

    def __init__(self, source: Any, means: Tensor, old: int, seed: int = 0) -> None:
        self.source, self.means, self.old, self.seed = source, means.float().cpu(), old, seed

    @property
    def backbone_seconds(self) -> float:
        return self.source.backbone_seconds

    def serve(self, members: Any) -> None:
        self.source.serve(members)

    def train(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        for x, y in self.source.train(epoch):
            yield self.with_pseudo(x, y, g)

    def evaluate(self, split: str) -> Iterator[tuple[Tensor, Tensor]]:
        if split == "test":
            yield from self.source.evaluate(split)
            return
        g = torch.Generator().manual_seed(self.seed + 7)  # the same pseudo images every epoch
        for x, y in self.source.evaluate(split):
            yield self.with_pseudo(x, y, g)

    def with_pseudo(self, x: Tensor, y: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
        """x: (1, B, T, D) normalised tokens, y: (B,) -> (1, B + b, T, D), (B + b,); b = the
        rows with a label (-100 marks rows the loss ignores)."""
        rows = (y >= 0).nonzero().flatten()
        if not len(rows):
            return x, y
        to = torch.randint(self.old, (len(rows),), generator=g)
        moved = x[:, rows].float().cpu() - self.means[y[rows]] + self.means[to]
        return torch.cat([x, moved.to(x.device, x.dtype)], 1), torch.cat([y, to.to(y.device)])


def balanced_weights(counts: Tensor) -> Tensor:
    """Cross-entropy class weights from per-class sample counts (C,): each class weighs the same
    in the loss (old classes have a few replayed or pseudo images, new ones all theirs)."""
    w = 1.0 / counts.float().clamp(min=1)
    return w * (len(w) / w.sum())
