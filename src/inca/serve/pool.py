"""The loaded tasks, grouped by the backbone they read: one group, one backbone, one queue.

A batch of a group runs the backbone ONCE for every task any of its rows asked for (the union
of their taps), normalises each tap once, then each task's adapters on the rows that asked for
it. Tasks that need a pass of their own (fine-tuned, VQT) run it on their rows only.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from inca.adapters import normalize_tokens
from inca.data.preprocess import ImageTransform
from inca.errors import IncaError
from inca.tasks import MultiTask
from inca.tasks.multi import backbone_differences
from inca.tasks.stacked import StackedTasks


@dataclass(frozen=True)
class Ranked:
    """One image's answer for one task: its class probabilities and the classes from likeliest
    to least (plain Python lists: a reply's top-k is a slice, with no tensor call per image and
    task on the event loop: 256 tasks x 32 images were 8,192 of them a batch)."""

    probs: list[float]
    order: list[int]

    @staticmethod
    def rows(probs: Tensor) -> list[Ranked]:
        """(b, C) probabilities -> b answers; ties keep the lower class index first."""
        probs = probs.float().cpu()
        order = probs.argsort(dim=1, descending=True, stable=True).tolist()
        return [Ranked(p, o) for p, o in zip(probs.tolist(), order, strict=True)]

    def top(self, k: int) -> list[tuple[int, float]]:
        """The ``k`` likeliest classes: (index, probability)."""
        return [(i, self.probs[i]) for i in self.order[:k]]


class BackboneGroup:
    """Tasks trained on one backbone, served from one pass of it per batch."""

    def __init__(self, tasks: Sequence[Any], device: str = "auto", precision: str = "auto"):
        multi = MultiTask(list(tasks), device=device, precision=precision)  # checks, loads
        self.backbone = multi.backbone
        self.tasks: dict[str, Any] = dict(multi.tasks)
        self.separate = set(multi.separate)
        self.transform = ImageTransform(self.backbone.preprocess)
        self.name = f"{self.backbone.name}@{self.backbone.preprocess.image_size}"
        self._lock = threading.Lock()  # tasks change between batches, never during one
        self._stacked: StackedTasks | None = multi.stacked  # rebuilt after a change

    def accepts(self, task: Any) -> bool:
        """Whether ``task`` was trained on this group's backbone (then it shares the pass)."""
        first = next(iter(self.tasks.values()), None)
        info = first.backbone_info if first is not None else None
        return info is not None and not backbone_differences(info, task.backbone_info)

    def add(self, task: Any) -> None:
        multi = MultiTask([task], backbone=self.backbone)  # the same checks as at start
        with self._lock:
            self.tasks[task.name] = task
            if multi.separate:
                self.separate.add(task.name)
            self._stacked = None

    def remove(self, name: str) -> None:
        with self._lock:
            del self.tasks[name]
            self.separate.discard(name)
            self._stacked = None

    @torch.inference_mode()
    def run(self, pixels: Tensor, wanted: Sequence[frozenset[str]], pass_per_task: bool = False
            ) -> list[dict[str, Ranked]]:  # fmt: skip
        """pixels (B, 3, S, S), the tasks each row asked for -> per row {task: its ranked
        probabilities}."""
        with self._lock:
            tasks = {n: self.tasks[n] for n in sorted(set().union(*wanted)) if n in self.tasks}
            separate = set(self.separate)
            stacked = self._stacked_tasks()
        out: list[dict[str, Ranked]] = [{} for _ in wanted]
        shared = [n for n in tasks if n not in separate]
        groups = [shared] if not pass_per_task else [[n] for n in shared]
        for names in groups:  # one pass for all (or, as a baseline, one per task)
            if not names:
                continue
            rows = [i for i, w in enumerate(wanted) if w & set(names)]
            taps = list(dict.fromkeys(t for n in names for t in tasks[n].taps))
            tokens = self.backbone.forward_taps(pixels[rows], taps)  # {tap: (b, T, D)}
            normed = {tap: normalize_tokens(t) for tap, t in tokens.items()}
            # every wanted task's members in a few stacked calls, not a loop over tasks
            for n, probs in stacked.forward_normalized(normed, names).items():
                ranked = Ranked.rows(probs)  # (b, C) -> b rows, in two calls per task
                for j, i in enumerate(rows):
                    if n in wanted[i]:
                        out[i][n] = ranked[j]
        for n in (n for n in tasks if n in separate):  # fine-tuned, VQT: their own pass
            rows = [i for i, w in enumerate(wanted) if n in w]
            ranked = Ranked.rows(tasks[n].predict_pixels(pixels[rows], self.backbone))
            for j, i in enumerate(rows):
                out[i][n] = ranked[j]
        return out

    def _stacked_tasks(self) -> StackedTasks:
        """The shared-pass tasks' members in stacks (rebuilt after a task is added or
        removed; called under the lock)."""
        if self._stacked is None:
            self._stacked = StackedTasks(
                {n: t for n, t in self.tasks.items() if n not in self.separate}
            )
        return self._stacked


class TaskPool:
    """Every loaded task, by name, in groups by backbone."""

    def __init__(self, tasks: Sequence[Any], device: str = "auto", precision: str = "auto"):
        self.device, self.precision = device, precision
        self.groups: list[BackboneGroup] = []
        pending: list[list[Any]] = []
        names: set[str] = set()
        for task in tasks:
            if task.name in names:
                raise IncaError(
                    f"two tasks are both named {task.name!r}; requests pick tasks by name, so "
                    "rename one (the 'name' field of its task.json)"
                )
            names.add(task.name)
            for bucket in pending:
                if not backbone_differences(bucket[0].backbone_info, task.backbone_info):
                    bucket.append(task)
                    break
            else:
                pending.append([task])
        self.groups = [BackboneGroup(b, device, precision) for b in pending]

    @property
    def names(self) -> list[str]:
        return [n for g in self.groups for n in g.tasks]

    def group_of(self, name: str) -> BackboneGroup:
        for g in self.groups:
            if name in g.tasks:
                return g
        raise KeyError(name)

    def task(self, name: str) -> Any:
        return self.group_of(name).tasks[name]

    def add(self, task: Any) -> tuple[BackboneGroup, bool]:
        """Load ``task`` into the group of its backbone (a new group when none fits); returns
        the group and whether it is new."""
        if task.name in self.names:
            raise IncaError(f"a task named {task.name!r} is loaded already; unload it first")
        for g in self.groups:
            if g.accepts(task):
                g.add(task)
                return g, False
        group = BackboneGroup([task], self.device, self.precision)
        self.groups.append(group)
        return group, True

    def remove(self, name: str) -> BackboneGroup | None:
        """Unload ``name``; returns its group when that is left empty (to be closed)."""
        group = self.group_of(name)
        group.remove(name)
        if not group.tasks:
            self.groups.remove(group)
            return group
        return None
