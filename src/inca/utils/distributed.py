"""Many processes under ``torchrun``: which one this is, and the few collective steps inca
needs (agreeing on options, waiting for each other).

inca has no launcher of its own: ``torchrun --nproc-per-node N -m inca ...`` sets ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`world` joins the process group on first use (gloo on
the CPU, NCCL on CUDA) and every later call returns the same :class:`World`. Without those
variables inca is one process and every collective here is a no-op, so single-process code
needs no branch.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from inca.errors import IncaError

TIMEOUT = datetime.timedelta(seconds=int(os.environ.get("INCA_DIST_TIMEOUT_S", "600")))


@dataclass(frozen=True)
class World:
    """rank: this process (0..size-1); size: how many; local_rank: its index on this machine
    (its GPU)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes headers, checkpoints, logs, reports and tasks."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


_WORLD: World | None = None


def world() -> World:
    """This process's place in the job (joining the process group the first time)."""
    global _WORLD
    if _WORLD is None:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
        if size > 1 and not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(local)
            dist.init_process_group(backend, timeout=TIMEOUT)
        _WORLD = World(rank, size, local)
    return _WORLD


def leave() -> None:
    """Leave the process group cleanly at the end of a command: every rank waits for the
    others, then destroys the group. Left to interpreter shutdown, a rank's gloo threads can
    outlive the group and abort the process ("terminate called without an active exception")
    after all its work is done."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if world().distributed:
        dist.barrier()


def agree(value: Any, what: str) -> None:
    """Every rank must hold the same ``value`` (JSON-able): ranks that disagree all stop with one
    clear error, instead of one waiting forever in a collective the others never reach."""
    w = world()
    if not w.distributed:
        return
    digest = hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
    digests: list[str] = [""] * w.size
    dist.all_gather_object(digests, digest)
    odd = [r for r, d in enumerate(digests) if d != digests[0]]
    if odd:
        raise IncaError(
            f"the processes of this torchrun job disagree on {what} (rank(s) {odd} differ from "
            "rank 0); launch every rank with the same command and options"
        )


def my_share(count: int) -> range:
    """The items ``0..count-1`` this rank handles: every ``size``-th, starting at its rank (so
    shares interleave and the last, short item falls to whichever rank it falls to)."""
    w = world()
    return range(w.rank, count, w.size)


def on_main(fn: Any) -> Any:
    """``fn()`` on rank 0 alone, its result given to every rank; an ``IncaError`` it raises is
    raised on every rank, so none is left waiting in a collective."""
    w = world()
    if not w.distributed:
        return fn()
    box: list[Any] = [None, None]
    if w.is_main:
        try:
            box = [fn(), None]
        except IncaError as e:
            box = [None, str(e)]
    dist.broadcast_object_list(box, src=0)
    if box[1] is not None:
        raise IncaError(box[1])
    return box[0]


def average_gradients_(optimizer: torch.optim.Optimizer) -> None:
    """Under torchrun: every gradient of ``optimizer``'s parameters averaged over the ranks in
    ONE flat all-reduce, so every rank takes the same step (each rank's loss is its slice's
    mean)."""
    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    flat = all_reduce_mean_(torch.cat([g.reshape(-1) for g in grads]))
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def all_reduce_mean_(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` replaced, in place, by its mean over the ranks (as is on one process)."""
    w = world()
    if w.distributed:
        dist.all_reduce(tensor)
        tensor /= w.size
    return tensor


def my_block(count: int, w: World | None = None) -> range:
    """This rank's contiguous block of ``0..count-1`` (blocks in rank order tile the range):
    evaluation splits are shared this way, so gathering in rank order restores split order."""
    w = w or world()
    edges = [count * r // w.size for r in range(w.size + 1)]
    return range(edges[w.rank], edges[w.rank + 1])


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor`` (rows of its block) concatenated in rank order, on every rank."""
    w = world()
    if not w.distributed:
        return tensor
    parts: list[Any] = [None] * w.size
    dist.all_gather_object(parts, tensor.cpu())
    return torch.cat(parts)


def gather_values(value: Any) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order, on every rank."""
    w = world()
    if not w.distributed:
        return [value]
    values: list[Any] = [None] * w.size
    dist.all_gather_object(values, value)
    return values
