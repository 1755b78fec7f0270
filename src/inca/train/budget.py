"""How long frozen-feature training runs: an epoch cap, a minimum in steps, patience, halving.

Epochs of frozen-feature methods from the activation cache are nearly free, so a fixed few
epochs is a choice that starves them, worst of all on small sets (450 images at batch 64 are 7
steps an epoch). The budget is therefore counted in optimizer steps where it matters:

* ``epochs`` caps the run; ``min_steps`` raises that cap on small sets so every run gets at
  least that many optimizer steps (the lr schedule spans the raised cap).
* ``patience``: stop when no member has improved its best validation score (accuracy, or
  the ``--metric``) nor its validation loss (by ``LOSS_MIN_DELTA``) for that many steps, and at
  most ``PATIENCE_MAX_EPOCHS`` epochs (never fewer than two, since validation runs once an
  epoch). Adapters can sit on a plateau (the majority class) for several epochs and then jump;
  on the plateau their loss still falls, which keeps the run going. The cap in epochs is what
  ends small sets: 800 steps are 10 epochs of 10k images but 57 epochs of 1,800, and runs
  whose best epoch was 20 went on to their caps of 77-250 epochs.
* successive halving (the InCA paper's two-stage training): every member trains for the first
  rung, then only the best ``halving_keep`` fraction (at least ``halving_min``) continues; rungs
  repeat at doubling epochs. A grid of a hundred adapters then costs little more than a dozen.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

PATIENCE_MAX_EPOCHS = 10  # patience never waits longer than this many epochs
LOSS_MIN_DELTA = 0.01  # a validation loss 1% below a member's last counted best is progress


SMALLEST_BATCH = 16


def fitted_batch_size(num_train: int, batch_size: int) -> int:
    """``batch_size`` halved (not below ``SMALLEST_BATCH``) until the training split holds 8
    batches: an epoch drops its last partial batch, and 500 images at batch 128 would train on
    384 of them in 3 steps an epoch (at 32: 15 steps, 20 images left out). A split of fewer
    than two of the smallest batches trains in one batch of every image."""
    if num_train < 2 * SMALLEST_BATCH:
        return max(1, num_train)
    while batch_size > SMALLEST_BATCH and num_train < 8 * batch_size:
        batch_size //= 2
    return batch_size


@dataclass(frozen=True)
class Budget:
    """The resolved budget of one run, for a training split of ``steps_per_epoch`` steps."""

    steps_per_epoch: int
    max_epochs: int
    patience_steps: int  # 0: never stop early
    rungs: tuple[int, ...]  # epochs after which halving happens
    keep: float
    min_members: int

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.max_epochs

    def describe(self) -> str:
        text = f"up to {self.max_epochs} epochs ({self.total_steps} steps)"
        if self.patience_steps:
            text += f", patience {self.patience_steps} steps"
        if self.rungs:
            text += f", halving after epochs {', '.join(map(str, self.rungs))}"
        return text


def resolve_budget(
    steps_per_epoch: int,
    epochs: int,
    min_steps: int = 0,
    patience: int = 0,
    halving_epochs: int = 0,
    halving_keep: float = 0.25,
    halving_min: int = 8,
    patience_cap_epochs: int = PATIENCE_MAX_EPOCHS,
) -> Budget:
    """The cap raised to ``min_steps``, patience of two to ``patience_cap_epochs`` epochs (0: no
    cap), and the halving rungs:
    the first after ``halving_epochs`` epochs (and at least min_steps/4 steps, so a small set is
    not judged after a handful of steps), then at doubling epochs, below the cap."""
    max_epochs = max(epochs, math.ceil(min_steps / steps_per_epoch)) if min_steps else epochs
    longest = patience_cap_epochs * steps_per_epoch if patience_cap_epochs else patience
    patience_steps = max(min(patience, longest), 2 * steps_per_epoch) if patience else 0
    rungs: list[int] = []
    if halving_epochs:
        first = max(halving_epochs, math.ceil(min_steps / 4 / steps_per_epoch))
        r = first
        while r < max_epochs:
            rungs.append(r)
            r *= 2
    return Budget(
        steps_per_epoch, max_epochs, patience_steps, tuple(rungs), halving_keep, halving_min
    )


def survivors(
    active: Sequence[str],
    best_acc: Mapping[str, float],
    val_loss: Mapping[str, float],
    keep: float,
    min_members: int,
) -> list[str]:
    """The members that continue after a halving rung, in their original order: the best
    ``keep`` fraction (at least ``min_members``) by best validation accuracy, then by current
    validation loss (members on a shared plateau differ there first), then by name."""
    n_keep = max(min_members, math.ceil(keep * len(active)))
    if n_keep >= len(active):
        return list(active)
    ranked = sorted(active, key=lambda n: (-best_acc[n], val_loss.get(n, math.inf), n))
    kept = set(ranked[:n_keep])
    return [n for n in active if n in kept]
