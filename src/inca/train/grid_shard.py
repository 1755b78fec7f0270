"""Adapter-parallel training (``--shard adapters``): under torchrun each rank trains its own slice
of a large grid over the WHOLE cached split, with no gradient traffic at all, and rank 0 gathers
the members for selection. Many hyper-parameter settings then spread over many GPUs.

Each adapter starts from a seed of its own name and sees every batch in the same order, so a
member trains exactly as it would in one process holding the whole grid. What must still be
decided for the grid as a whole -- which members survive a halving rung, whether patience has
run out, whether every member diverged, what the log says -- is decided on every rank from the
same merged :class:`Standing`, gathered once per epoch (a few numbers per member).

Every rank checkpoints its slice to ``shards/rank<r>.safetensors`` and keeps the one before as
``rank<r>.prev.safetensors``: a kill can leave ranks one epoch apart, and a resume continues
from the last epoch every rank holds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.distributed as dist

from inca.errors import IncaError
from inca.train import checkpoint
from inca.train.trainer_state import Progress
from inca.utils.distributed import my_share, world


def my_slice(names: list[str]) -> list[str]:
    """This rank's members of the grid ``names`` (interleaved, so adapters of every size and
    tap spread evenly over the ranks)."""
    w = world()
    if len(names) < w.size:
        raise IncaError(
            f"--shard adapters spreads the plan's {len(names)} trained adapter(s) over "
            f"{w.size} processes; give the plan at least {w.size}, or launch fewer processes"
        )
    return [names[i] for i in my_share(len(names))]


@dataclass
class Standing:
    """The whole grid after an epoch, the same on every rank: this epoch's validation accuracy
    and training loss, each member's best accuracy and last validation loss, the diverged and
    the still active members, and the last step any member improved."""

    accs: dict[str, float] = field(default_factory=dict)
    losses: dict[str, float] = field(default_factory=dict)
    best_acc: dict[str, float] = field(default_factory=dict)
    last_val_loss: dict[str, float] = field(default_factory=dict)
    diverged: dict[str, int] = field(default_factory=dict)
    active: list[str] = field(default_factory=list)
    last_improved_step: int = 0

    @classmethod
    def of(cls, progress: Progress, accs: dict[str, float], losses: dict[str, float],
           active: list[str]) -> Standing:  # fmt: skip
        """One trainer's standing: its members' ``accs`` and ``losses`` this epoch, and copies
        of what its ``progress`` holds for them."""
        return cls(accs, losses, dict(progress.best_acc), dict(progress.last_val_loss),
                   dict(progress.diverged), list(active), progress.last_improved_step)  # fmt: skip

    def merged(self, grid: bool) -> Standing:
        """Every rank's standing in one (``grid``: ranks hold different members; otherwise
        every rank already holds the whole and this is it)."""
        if not grid:
            return self
        parts: list[Any] = [None] * world().size
        dist.all_gather_object(parts, self)
        out = Standing(last_improved_step=max(p.last_improved_step for p in parts))
        for p in parts:
            for name in ("accs", "losses", "best_acc", "last_val_loss", "diverged"):
                getattr(out, name).update(getattr(p, name))
            out.active += p.active
        return out


def shard_file(rank: int, prev: bool = False) -> str:
    return f"shards/rank{rank}{'.prev' if prev else ''}.safetensors"


def save_shard(out_dir: Path, tensors: dict, meta: dict) -> None:
    """This rank's checkpoint, the one before it kept (a kill may leave ranks an epoch apart)."""
    rank = world().rank
    current = Path(out_dir) / shard_file(rank)
    if current.exists():
        os.replace(current, Path(out_dir) / shard_file(rank, prev=True))
    checkpoint.save(out_dir, tensors, meta, shard_file(rank))


def resume_file(out_dir: Path) -> str | None:
    """The file this rank resumes from: the one holding the last epoch EVERY rank holds (None:
    no rank has a checkpoint yet, the run starts)."""
    rank = world().rank
    held: dict[int, str] = {}
    for prev in (True, False):
        name = shard_file(rank, prev)
        if (Path(out_dir) / name).exists():
            held[checkpoint.read_meta(Path(out_dir), name)["epoch"]] = name
    everyone: list[Any] = [None] * world().size
    dist.all_gather_object(everyone, sorted(held))
    if not any(everyone):
        return None
    common = set(everyone[0]).intersection(*everyone[1:])
    if not common:
        raise IncaError(
            f"cannot resume {out_dir}: its shard checkpoints hold no epoch in common "
            f"(epochs per rank: {everyone}); resume with the number of processes that started "
            "it, or train again in another --out"
        )
    return held[max(common)]


def gather_on_main(local: dict[str, Any]) -> dict[str, Any]:
    """Every rank's ``local`` dict merged on rank 0 (other ranks get an empty dict)."""
    w = world()
    parts: list[Any] = [None] * w.size if w.is_main else []
    dist.gather_object(local, parts if w.is_main else None, dst=0)
    return {k: v for p in parts for k, v in p.items()} if w.is_main else {}
