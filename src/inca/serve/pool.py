"""The loaded tasks, grouped by the backbone they read: one group, one backbone, one queue.

A batch of a group runs the backbone ONCE for every task any of its rows asked for (the union
of their taps), normalises each tap once, then each task's adapters on the rows that asked for
it. Tasks that need a pass of their own (fine-tuned, VQT) run it on their rows only.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from inca.adapters import normalize_tokens
from inca.data.preprocess import ImageTransform
from inca.data.views import expand_views, mean_over_views, union_views
from inca.errors import IncaError
from inca.tasks import MultiTask
from inca.tasks.by_backbone import bucket_by_backbone, part_name, served_tasks
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

    @staticmethod
    def mix(parts: Sequence[tuple[float, Ranked]]) -> Ranked:
        """The weighted mean of several answers for one image (a combined task's parts)."""
        probs = [math.fsum(w * r.probs[c] for w, r in parts) for c in range(len(parts[0][1].probs))]
        order = sorted(range(len(probs)), key=lambda c: -probs[c])  # stable: ties, lower first
        return Ranked(probs, order)

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
        self.view_images = 0  # backbone images run for test-time views beyond the requests

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
            views = union_views([tasks[n].view_set for n in names])  # test-time views
            x = expand_views(pixels[rows], views)  # (V * b, 3, S, S)
            tokens = self.backbone.forward_taps(x, taps)  # {tap: (V * b, T, D)}
            normed = {tap: normalize_tokens(t) for tap, t in tokens.items()}
            self.view_images += len(x) - len(rows)  # what the views cost, beyond the images
            # every wanted task's members in a few stacked calls, not a loop over tasks
            for n, probs in stacked.forward_normalized(normed, names).items():
                probs = mean_over_views(probs, views, tasks[n].view_set)  # (b, C)
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
    """Every loaded task, by name, in groups by backbone.

    A combined task (members on several backbones, ``CombinedTask``) is served as its parts:
    each part joins the group of its backbone under a hidden name ("{task}#part{i}"), so it
    shares that backbone's pass with the other tasks on it; a request for the combined task
    reaches each part's group, and the reply mixes the parts' probabilities (``routes``)."""

    def __init__(self, tasks: Sequence[Any], device: str = "auto", precision: str = "auto"):
        self.device, self.precision = device, precision
        self.groups: list[BackboneGroup] = []
        self.combined: dict[str, Any] = {}  # name -> CombinedTask
        self._order: list[str] = []  # the names requests use, in loading order
        for task in tasks:
            self._claim(task)
        self.groups = [BackboneGroup(b, device, precision) for b in bucket_by_backbone(tasks)]

    def _claim(self, task: Any) -> None:
        """Record ``task``'s name (and a combined task's), refusing one loaded already."""
        taken = set(self._order) | {n for g in self.groups for n in g.tasks}
        hidden = [part_name(task.name, i) for i in range(len(getattr(task, "parts", [])))]
        clash = [n for n in [task.name, *hidden] if n in taken]
        if clash:
            raise IncaError(
                f"a task named {clash[0]!r} is loaded already; requests pick tasks by name, so "
                "rename one (the 'name' field of its task.json) or unload the other first"
            )
        self._order.append(task.name)
        if hidden:
            self.combined[task.name] = task

    @property
    def names(self) -> list[str]:
        return list(self._order)

    def group_of(self, name: str) -> BackboneGroup:
        for g in self.groups:
            if name in g.tasks:
                return g
        raise KeyError(name)

    def routes(self, name: str) -> list[tuple[BackboneGroup, str, float]]:
        """Where a request for ``name`` goes: (group, task name there, weight of its
        probabilities); one route of weight 1 for a plain task, one per part for a combined
        one. KeyError when it is not loaded."""
        if name not in self._order:
            raise KeyError(name)
        task = self.combined.get(name)
        if task is None:
            return [(self.group_of(name), name, 1.0)]
        return [(self.group_of(p.name), p.name, w)
                for p, w in zip(task.parts, task.weights, strict=True)]  # fmt: skip

    def task(self, name: str) -> Any:
        if name in self.combined:
            return self.combined[name]
        return self.group_of(name).tasks[name]

    def add(self, task: Any) -> list[BackboneGroup]:
        """Load ``task`` into the group of its backbone (a new group when none fits; a combined
        task's parts each into theirs); returns the groups it joined."""
        self._claim(task)
        joined = []
        try:
            for part in served_tasks(task):
                joined.append(self._join(part))
        except BaseException:
            for group in joined:  # all or nothing
                self._leave(group, task)
            self._order.remove(task.name)
            self.combined.pop(task.name, None)
            raise
        return joined

    def _join(self, task: Any) -> BackboneGroup:
        for g in self.groups:
            if g.accepts(task):
                g.add(task)
                return g
        group = BackboneGroup([task], self.device, self.precision)
        self.groups.append(group)
        return group

    def _leave(self, group: BackboneGroup, task: Any) -> None:
        for part in served_tasks(task):
            if part.name in group.tasks:
                group.remove(part.name)
        if not group.tasks and group in self.groups:
            self.groups.remove(group)

    def remove(self, name: str) -> list[BackboneGroup]:
        """Unload ``name``; returns the groups left empty by it (to be closed)."""
        routes = self.routes(name)
        emptied = []
        for group, served, _ in routes:
            group.remove(served)
            if not group.tasks and group in self.groups:
                self.groups.remove(group)
                emptied.append(group)
        self._order.remove(name)
        self.combined.pop(name, None)
        return emptied
