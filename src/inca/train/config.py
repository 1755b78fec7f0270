"""What every training run shares: the budget, the schedule and the loss (``TrainConfig``).

Frozen-feature training (adapter plans, from the activation cache) reads ``epochs`` as a cap and
may stop early or halve its grid (``inca.train.budget``); fine-tuning methods train exactly
``epochs``: their epochs cost a backbone pass each.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from inca.data.views import views_of
from inca.errors import IncaError
from inca.train.budget import PATIENCE_MAX_EPOCHS, Budget, fitted_batch_size, resolve_budget
from inca.train.metrics import check_metric
from inca.utils.distributed import world


@dataclass(frozen=True)
class TrainConfig:
    """What every training method shares. Frozen-feature training (adapter plans) reads
    ``epochs`` as a cap and may stop early or halve its grid (see ``inca.train.budget``);
    fine-tuning methods train exactly ``epochs``."""

    epochs: int = 4
    batch_size: int = 64
    eval_batch_size: int = 128
    warmup: float = 0.1  # fraction of all steps spent warming up
    label_smoothing: float = 0.0
    augment: bool = True
    seed: int = 0
    workers: int | None = None
    progress: bool = True
    min_steps: int = 0  # adapter plans: at least this many optimizer steps (small sets)
    patience: int = 0  # adapter plans: stop after this many steps without a better member
    halving_epochs: int = 0  # adapter plans: first successive-halving rung (0: no halving)
    halving_keep: float = 0.25  # fraction of members that continue after each rung
    halving_min: int = 8  # never fewer members than this after a rung
    metric: str = "accuracy"  # what ranks members: their best epoch, halving, selection
    patience_cap_epochs: int = PATIENCE_MAX_EPOCHS  # patience waits at most this (0: no cap)
    fit_batch: bool = True  # halve the batch for small training sets (False: a chosen batch)
    # adapter plans: members' forward and backward through torch.compile (inductor). About
    # 1.3x faster steps on this CPU, after ~30 s of compiling for each set of members (again
    # after every halving rung); needs a C++ compiler. Off by default: short runs lose.
    compile: bool = False
    # exact views (inca.data.views) of orientation-free images: ``views`` names the set a
    # training image is shown in (one drawn per image and epoch); ``test_views`` averages the
    # class probabilities over the same set on validation and test (and in the saved tasks)
    views: str = "none"
    test_views: bool = False

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise IncaError("epochs, batch_size and eval_batch_size must be at least 1")
        if not 0 <= self.warmup < 1:
            raise IncaError(f"warmup is a fraction of the steps in [0, 1), got {self.warmup}")
        if not 0 <= self.label_smoothing < 1:
            raise IncaError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if min(self.min_steps, self.patience, self.halving_epochs, self.patience_cap_epochs) < 0:
            raise IncaError(
                "min_steps, patience, patience_cap_epochs and halving_epochs must be >= 0 (0: off)"
            )
        check_metric(self.metric)
        views_of(self.views)  # a clear error for an unknown set
        if self.test_views and self.views == "none":
            raise IncaError(
                "test-time views average over --views; name the set (e.g. --views dihedral)"
            )
        if not 0 < self.halving_keep <= 1 or self.halving_min < 1:
            raise IncaError(
                f"halving keeps a fraction in (0, 1] and at least 1 member, got "
                f"keep={self.halving_keep}, min={self.halving_min}"
            )

    def signature(self) -> dict[str, Any]:
        """What must match for a checkpoint to be resumed (progress display, workers and
        compiling may not).
        Options added after a run was made are left out while at their defaults, so its
        checkpoint still resumes."""
        later = {f: getattr(TrainConfig, f) for f in LATER_FIELDS}
        return {
            k: v
            for k, v in asdict(self).items()
            if k not in ("progress", "workers", "compile") and not (k in later and v == later[k])
        }

    def to_options(self) -> dict[str, Any]:
        """As plain options (saved by `inca compare`): fields added later are left out while
        at their defaults, so options saved before them still compare equal."""
        later = {f: getattr(TrainConfig, f) for f in LATER_FIELDS}
        return {k: v for k, v in asdict(self).items() if not (k in later and v == later[k])}

    def fitted_to(self, num_train: int) -> TrainConfig:
        """This config with its batch fitted to a training split of ``num_train`` images
        (``budget.fitted_batch_size``, said aloud) unless the batch was chosen (``fit_batch``
        False: kept, and refused later if it holds no step)."""
        batch = fitted_batch_size(num_train, self.batch_size)
        if not self.fit_batch or batch == self.batch_size:
            return self
        if world().is_main:
            print(f"batch size {batch}: {num_train} training images hold fewer than 8 batches "
                  f"of {self.batch_size} (--batch-size sets it)")  # fmt: skip
        return replace(self, batch_size=batch)

    def budget(self, steps_per_epoch: int) -> Budget:
        return resolve_budget(
            steps_per_epoch,
            self.epochs,
            self.min_steps,
            self.patience,
            self.halving_epochs,
            self.halving_keep,
            self.halving_min,
            self.patience_cap_epochs,
        )


# Frozen-feature training (adapter plans, from the activation cache): epochs there cost a few
# percent of a backbone pass, so the budget is "until validation stops improving", counted in
# optimizer steps, with a grid halved early. Fine-tuning keeps TrainConfig()'s epoch budget.
FROZEN_DEFAULTS: dict[str, Any] = {
    "epochs": 20,  # a cap (the cosine schedule spans it); patience may end the run before
    "batch_size": 128,
    "label_smoothing": 0.1,
    "augment": False,  # one cached view per image
    "min_steps": 1000,
    "patience": 800,
    "halving_epochs": 2,
    "halving_keep": 0.25,
    "halving_min": 12,
}

LATER_FIELDS = ("min_steps", "patience", "halving_epochs", "halving_keep", "halving_min", "metric",
                "patience_cap_epochs", "fit_batch", "compile", "views", "test_views")  # fmt: skip
