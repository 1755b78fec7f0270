"""Batch sources for the :class:`~inca.train.trainer.Trainer`: pixels, or normalised tokens.

Every source gives the same images in the same order for a (seed, epoch): the training split
shuffled by ``epoch_order`` with the last partial batch dropped, augmented per (seed, epoch),
so that methods compared in one harness see the same data and a resumed run the same batches.

* :class:`PixelSource`: pixels (B, 3, S, S), for methods that run the backbone themselves
  (fine-tuning, VQT).
* :class:`TokenSource`: the frozen backbone's normalised tokens of the members' taps,
  (n_taps, B, T, D): from one backbone pass per batch (online) or, where an activation cache is
  given for a split, read from it with no backbone pass at all.

With ``config.views`` (exact views of orientation-free images, ``inca.data.views``) every
training image is shown in one view of the set, drawn per image and epoch. With
``config.test_views``, validation and test batches hold every view of their b images, view-major
(V * b rows for b labels): ``predict_all`` averages the probabilities over them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

from inca.adapters.base import stack_taps
from inca.backbones.base import Backbone
from inca.cache import ActivationCache
from inca.data import ImageTransform, Splits, Subset, make_loader
from inca.data.views import expand_views, random_views, views_of
from inca.errors import IncaError
from inca.train.config import TrainConfig
from inca.train.schedule import epoch_order
from inca.utils.distributed import World, my_block, world


def token_dtype(backbone: Backbone) -> torch.dtype:
    """Adapters read tokens in the backbone's output dtype when that is bf16 (half the memory
    traffic of their token-sized matmuls); parameters, softmax and the rest stay fp32."""
    return torch.bfloat16 if backbone.precision.output_dtype == torch.bfloat16 else torch.float32


class PixelSource:
    """Pixels and labels of ``splits``, batched as ``config`` says."""

    def __init__(
        self, backbone: Backbone, splits: Splits, config: TrainConfig, sharded: bool = True
    ) -> None:
        self.backbone, self.splits, self.config = backbone, splits, config
        # under torchrun, each rank's share of every batch and split (False: the whole, for
        # work rank 0 does alone)
        self.world = world() if sharded else World()
        self.backbone_seconds = 0.0  # the members run the backbone: their time is training

    def serve(self, members: Any) -> None:
        """Pixels are all any member reads."""

    @property
    def batch_size(self) -> int:
        """This process's part of every global batch (all of it on one process)."""
        return self.config.batch_size // self.world.size

    def _order(self, epoch: int) -> Tensor:
        """Epoch ``epoch``'s training positions, whole batches only (the last partial one is
        dropped): the same for every source. Under torchrun, rank r keeps the r-th of
        ``size`` equal slices of every global batch, so one optimizer step still sees the
        global batch."""
        cfg, w = self.config, self.world
        order = epoch_order(len(self.splits.train), cfg.seed, epoch)
        order = order[: len(order) // cfg.batch_size * cfg.batch_size]
        if w.distributed:
            b = self.batch_size
            order = order.view(-1, cfg.batch_size)[:, w.rank * b : (w.rank + 1) * b].reshape(-1)
        return order

    def _eval_subset(self, split: str) -> Subset:
        """This rank's contiguous block of ``split`` (the whole split on one process)."""
        subset = getattr(self.splits, split)
        block = my_block(len(subset), self.world)
        return Subset(subset.dataset, subset.indices[block.start : block.stop])

    def _train_loader(self, epoch: int):
        cfg, subset = self.config, self.splits.train
        transform = ImageTransform(
            self.backbone.preprocess, augment=cfg.augment, allow_hflip=subset.dataset.allow_hflip
        )
        ordered = Subset(subset.dataset, subset.indices[self._order(epoch).numpy()])
        return make_loader(
            ordered, transform, self.batch_size, seed=cfg.seed * 1000 + epoch,
            num_workers=cfg.workers,
        )  # fmt: skip

    def _eval_loader(self, split: str):
        return make_loader(
            self._eval_subset(split),
            ImageTransform(self.backbone.preprocess),
            self.config.eval_batch_size,
            num_workers=self.config.workers,
        )

    @property
    def views(self) -> tuple[int, ...]:
        return views_of(self.config.views)

    def view_generator(self, epoch: int) -> torch.Generator:
        """The draw of training views for ``epoch`` (rank ``r`` its own stream)."""
        return torch.Generator().manual_seed(
            (self.config.seed * 1000 + epoch) * 64 + self.world.rank
        )

    def eval_views(
        self, split: str, one_view: bool = False, every_view: bool = False
    ) -> tuple[int, ...]:
        """The views a batch of ``split`` holds: the set on val and test with test views, and
        on any split with ``every_view`` (a probe fitted on every training view)."""
        if every_view or (self.config.test_views and split != "train" and not one_view):
            return self.views
        return (0,)

    def train(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        gen = self.view_generator(epoch)
        for pixels, labels, _ in self._train_loader(epoch):
            yield random_views(pixels, self.views, gen), labels

    def evaluate(
        self, split: str, one_view: bool = False, every_view: bool = False
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Split ``split`` in order, not augmented (``train`` too: features to select on); each
        batch (V * b rows, view-major) with the views of ``eval_views``."""
        views = self.eval_views(split, one_view, every_view)
        for pixels, labels, _ in self._eval_loader(split):
            yield expand_views(pixels, views), labels


class TokenSource(PixelSource):
    """Normalised tokens of ``taps`` (n_taps, B, T, D) with labels; read from ``caches[split]``
    where a cache is given for the split, else from one backbone pass per batch."""

    def __init__(
        self,
        backbone: Backbone,
        splits: Splits,
        taps: list[str],
        config: TrainConfig,
        caches: Mapping[str, ActivationCache] | None = None,
        sharded: bool = True,
    ) -> None:
        super().__init__(backbone, splits, config, sharded)
        self.taps = taps
        self.caches = dict(caches or {})
        self.token_dtype = token_dtype(backbone)

    def serve(self, members: Any) -> None:
        self.taps = list(members.taps)  # read only the taps the members still need

    def train(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        gen = self.view_generator(epoch)
        if "train" in self.caches:
            cache = self.caches["train"]
            order = self._order(epoch)
            # a cache of exact views: one drawn per image; of augmented views: the epoch's
            drawn = (torch.randint(cache.views, (len(order),), generator=gen)
                     if cache.view_set != "none" else torch.full((len(order),), epoch))  # fmt: skip
            for pos, view in zip(order.split(self.batch_size), drawn.split(self.batch_size),
                                 strict=True):  # fmt: skip
                yield cache.read(pos, self.taps, view, self.token_dtype), cache.labels[pos]
            return
        yield from self._online(
            self._train_loader(epoch), lambda x: random_views(x, self.views, gen)
        )

    def evaluate(
        self, split: str, one_view: bool = False, every_view: bool = False
    ) -> Iterator[tuple[Tensor, Tensor]]:
        views = self.eval_views(split, one_view, every_view)
        if split in self.caches:
            cache = self.caches[split]
            if len(views) > cache.views:
                raise IncaError(
                    f"the {split} cache holds {cache.views} view(s) of each image, not the "
                    f"{len(views)} test views; build it with the same --views and --test-views"
                )
            block = my_block(len(getattr(self.splits, split)), self.world)
            for pos in torch.arange(block.start, block.stop).split(self.config.eval_batch_size):
                every = torch.arange(len(views)).repeat_interleave(len(pos))  # view-major
                x = cache.read(pos.repeat(len(views)), self.taps, every, self.token_dtype)
                yield x, cache.labels[pos]
            return
        yield from self._online(self._eval_loader(split), lambda x: expand_views(x, views))

    def _online(self, loader, viewed) -> Iterator[tuple[Tensor, Tensor]]:
        for pixels, labels, _ in loader:
            pixels = viewed(pixels)
            t0 = time.perf_counter()
            tokens = self.backbone.forward_taps(pixels, self.taps)  # ONE pass, no grad
            x = stack_taps(tokens, self.taps, normalize=True, dtype=self.token_dtype)
            del tokens  # not held while the adapters train on x
            self.backbone_seconds += time.perf_counter() - t0
            yield x, labels
            del x  # resumed for the next batch: drop this one before the next backbone pass
