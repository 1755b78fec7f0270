"""What a :class:`~inca.train.trainer.Trainer` checkpoints besides its members' weights: its
:class:`Progress` (epoch, step, best accuracies, timings, halving and divergence records) as
JSON, and its tensors (current and best-epoch members, best validation probabilities, AdamW
moments). Restoring both continues a run exactly."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from torch import Tensor

from inca.train import checkpoint

MEMBERS_KEY = "bank"  # the checkpoint prefix of the members' state (its name since version 1)
# the progress every checkpoint holds; an older one may lack the other fields (they default)
ALWAYS_SAVED = ("epoch", "step", "best_acc", "best_epoch", "train_seconds", "backbone_seconds",
                "images_seen")  # fmt: skip


@dataclass
class Progress:
    """How far a run has come: what the checkpoint's meta holds, one key per field.

    Checkpoints written before a field existed lack it: :meth:`from_meta` gives such fields the
    defaults below (``last_improved_step``: the saved step, no improvement counted before the
    resume); every checkpoint holds those in :data:`ALWAYS_SAVED`."""

    epoch: int = 0  # epochs finished
    step: int = 0  # optimizer steps taken
    best_acc: dict[str, float] = field(default_factory=dict)  # member -> best val score
    best_epoch: dict[str, int] = field(default_factory=dict)  # member -> the epoch of it
    train_seconds: float = 0.0
    backbone_seconds: float = 0.0  # of train_seconds, in the frozen backbone
    images_seen: int = 0
    val_seconds: float = 0.0
    dropped_at: dict[str, int] = field(default_factory=dict)  # member -> halving rung epoch
    last_val_loss: dict[str, float] = field(default_factory=dict)  # halving's tie-breaker
    best_loss: dict[str, float] = field(default_factory=dict)  # member -> lowest val loss
    last_improved_step: int = 0  # the last step any member improved (patience)
    stopped: str = ""  # why training stopped before the epoch cap ("": it did not)
    curve: list[dict[str, Any]] = field(default_factory=list)  # per epoch: seconds, best val
    diverged: dict[str, int] = field(default_factory=dict)  # member -> epoch it went non-finite

    @classmethod
    def start(cls, names: list[str]) -> Progress:
        """The progress of a run that has not trained yet, for members ``names``."""
        return cls(best_acc=dict.fromkeys(names, -1.0), best_epoch=dict.fromkeys(names, 0))

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Progress:
        """The progress a checkpoint's ``meta`` holds (its other keys are ignored)."""
        saved = {f.name: meta[f.name] for f in fields(cls) if f.name in meta}
        missing = [name for name in ALWAYS_SAVED if name not in saved]
        if missing:
            raise KeyError(f"the checkpoint's progress lacks {', '.join(missing)}")
        saved.setdefault("last_improved_step", saved["step"])
        return cls(**saved)

    def to_meta(self) -> dict[str, Any]:
        """Every field by name, as the checkpoint's meta keeps them."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def tensors(trainer: Any) -> dict[str, Tensor]:
    """The trainer's tensors, flat (without the optimizer's)."""
    out = checkpoint.flatten(MEMBERS_KEY, trainer.members.checkpoint_state())
    for n in trainer.all_names:
        out |= checkpoint.flatten(f"best/{n}", trainer.best_state[n])
    out |= {f"valprobs/{n}": p for n, p in trainer.best_val_probs.items()}
    if trainer.val_labels is not None:
        out["val_labels"] = trainer.val_labels
    return out


def restore_tensors(trainer: Any, saved: dict[str, Tensor]) -> None:
    trainer.members.load_checkpoint_state(checkpoint.unflatten(saved, MEMBERS_KEY))
    for n in trainer.all_names:
        trainer.best_state[n] = checkpoint.unflatten(saved, f"best/{n}")
        if f"valprobs/{n}" in saved:
            trainer.best_val_probs[n] = saved[f"valprobs/{n}"]
    trainer.val_labels = saved.get("val_labels")
