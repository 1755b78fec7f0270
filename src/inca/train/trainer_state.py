"""What a :class:`~inca.train.trainer.Trainer` checkpoints besides its members' weights: its
progress (epoch, step, best accuracies, timings, halving and divergence records) as JSON, and
its tensors (current and best-epoch members, best validation probabilities, AdamW moments).
Restoring both continues a run exactly."""

from __future__ import annotations

import copy
from typing import Any

from torch import Tensor

from inca.train import checkpoint

MEMBERS_KEY = "bank"  # the checkpoint prefix of the members' state (its name since version 1)

# progress field -> its value in checkpoints written before the field existed (None: always
# there; "step" for last_improved_step: no improvement counted before the resume)
PROGRESS: dict[str, Any] = {
    "epoch": None,
    "step": None,
    "best_acc": None,
    "best_epoch": None,
    "train_seconds": None,
    "backbone_seconds": None,
    "images_seen": None,
    "val_seconds": 0.0,
    "dropped_at": {},
    "last_val_loss": {},
    "best_loss": {},
    "last_improved_step": "step",
    "stopped": "",
    "curve": [],
    "diverged": {},
}


def fresh(names: list[str]) -> dict[str, Any]:
    """The progress of a run that has not trained yet, for members ``names``."""
    return {"epoch": 0, "step": 0, "best_acc": dict.fromkeys(names, -1.0),
            "best_epoch": dict.fromkeys(names, 0), "train_seconds": 0.0,
            "backbone_seconds": 0.0, "images_seen": 0, "last_improved_step": 0}  # fmt: skip


def progress(trainer: Any) -> dict[str, Any]:
    return {name: getattr(trainer, name) for name in PROGRESS}


def restore_progress(trainer: Any, meta: dict[str, Any]) -> None:
    for name, default in PROGRESS.items():
        if default is None:
            value = meta[name]
        elif default == "step":
            value = meta.get(name, meta["step"])
        else:
            value = meta.get(name, copy.copy(default))
        setattr(trainer, name, value)


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
