"""What the :class:`~inca.train.trainer.Trainer` trains (``Members``) and where its batches come
from (``BatchSource``): the two small protocols every method satisfies. Members the budget halves
(an adapter bank) are also :class:`Subsettable`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor


class Members(Protocol):
    """What the :class:`Trainer` trains: named members, each a classifier of its own.

    An ``nn.Module`` (``train``/``eval``/``to``) with disjoint parameters per member."""

    class_weights: Tensor | None  # (C,) weights of every member's loss (to balance), or None

    @property
    def names(self) -> list[str]: ...

    def forward_batch(self, inputs: Tensor) -> dict[str, Tensor]:
        """A batch from the source -> {member: logits (B, C)}."""
        ...

    def param_groups(self) -> list[dict[str, Any]]:
        """AdamW groups, each with ``lr``, ``base_lr`` and ``weight_decay``."""
        ...

    def member_state(self, name: str) -> dict[str, Tensor]:
        """What member ``name`` learned (CPU copies): kept at its best epoch."""
        ...

    def load_member_state(self, name: str, state: dict[str, Tensor]) -> None: ...

    def checkpoint_state(self) -> dict[str, Tensor]:
        """Everything training changes (trainable weights, random generators)."""
        ...

    def load_checkpoint_state(self, state: dict[str, Tensor]) -> None: ...


@runtime_checkable
class Subsettable(Members, Protocol):
    """Members that successive halving can drop (frozen-feature members: an adapter bank)."""

    def subset(self, names: list[str]) -> Subsettable:
        """New members of only ``names``, carrying their current weights."""
        ...

    def carry_optimizer_state(
        self, old: torch.optim.Optimizer, subset: Subsettable, new: torch.optim.Optimizer
    ) -> None:
        """Move the state ``old`` (the optimizer of these members) holds for ``subset`` (made by
        :meth:`subset`) into ``new`` (``subset``'s optimizer): its members continue exactly."""
        ...


class BatchSource(Protocol):
    """Where batches come from: ``train(epoch)`` and ``evaluate(split)`` yield (inputs, labels).
    ``train`` yields ``len(splits.train) // batch_size`` full batches in ``epoch_order``."""

    backbone_seconds: float  # time spent in the frozen backbone (0 from a cache)

    def train(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]: ...

    def evaluate(self, split: str) -> Iterator[tuple[Tensor, Tensor]]: ...

    def serve(self, members: Members) -> None:
        """Give only what ``members`` read from now on (after halving dropped some)."""
        ...
