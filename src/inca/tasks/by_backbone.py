"""Tasks on several backbones, each backbone run once per batch for every task on it.

``MultiTask`` serves tasks of ONE backbone from one pass. A user's tasks may read several
(a DINOv2 task beside an EfficientNet one), and a ``CombinedTask`` reads several by itself.
Here tasks are put in buckets by backbone (a combined task's parts each in the bucket of its
backbone, under a hidden name, "{task}#part{i}"); each bucket is one ``MultiTask``; a combined
task's answer is its parts' answers mixed by its weights. ``inca predict`` and ``inca serve``
(``inca.serve.pool``) both group this way.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from inca.backbones.base import Backbone
from inca.data.preprocess import ImageTransform
from inca.errors import IncaError
from inca.tasks.multi import MultiTask, backbone_differences
from inca.tasks.storage import load_task


def part_name(task: str, i: int) -> str:
    """The hidden name part ``i`` of combined task ``task`` is served under."""
    return f"{task}#part{i}"


def served_tasks(task: Any) -> list[Any]:
    """What a backbone's group runs for ``task``: itself, or a combined task's parts, each
    renamed to its hidden name (``part_name``)."""
    if not hasattr(task, "parts"):
        return [task]
    for i, part in enumerate(task.parts):
        part.name = part_name(task.name, i)
    return list(task.parts)


def bucket_by_backbone(tasks: Sequence[Any]) -> list[list[Any]]:
    """The single-backbone tasks (combined ones' parts) in buckets of one backbone each, in the
    order the backbones first appear."""
    buckets: list[list[Any]] = []
    for task in tasks:
        for served in served_tasks(task):
            for bucket in buckets:
                if not backbone_differences(bucket[0].backbone_info, served.backbone_info):
                    bucket.append(served)
                    break
            else:
                buckets.append([served])
    return buckets


def check_unique_names(tasks: Sequence[Any]) -> None:
    names: set[str] = set()
    for task in tasks:
        hidden = [part_name(task.name, i) for i in range(len(getattr(task, "parts", [])))]
        for n in [task.name, *hidden]:
            if n in names:
                raise IncaError(
                    f"two tasks are both named {n!r}; predictions are keyed by task name, so "
                    "rename one (the 'name' field of its task.json)"
                )
            names.add(n)


class MultiBackbone:
    """Tasks on any backbones: one ``MultiTask`` (one pass) per backbone.

    Args:
        tasks: tasks or task directories (``Task``, ``FineTunedTask``, ``CombinedTask``).
        device, precision: where and how to run the backbones loaded here.
    """

    def __init__(
        self,
        tasks: Sequence[Any | str | os.PathLike],
        device: str | torch.device | None = None,
        precision: str | None = "auto",
    ) -> None:
        loaded = [t if hasattr(t, "class_names") else load_task(t) for t in tasks]
        if not loaded:
            raise IncaError("give at least one task")
        check_unique_names(loaded)
        self.tasks: dict[str, Any] = {t.name: t for t in loaded}
        self.groups = [
            MultiTask(b, device=device, precision=precision) for b in bucket_by_backbone(loaded)
        ]

    @property
    def task_names(self) -> list[str]:
        return list(self.tasks)

    @property
    def backbones(self) -> list[Backbone]:
        return [g.backbone for g in self.groups]

    @property
    def transforms(self) -> list[ImageTransform]:
        """The preprocessing of each backbone, in ``backbones`` order."""
        return [ImageTransform(b.preprocess) for b in self.backbones]

    def predict_proba(self, pixels: Sequence[Tensor]) -> dict[str, Tensor]:
        """Pixels for each backbone (``transforms``' order) -> {task: probabilities (B, C)}."""
        if len(pixels) != len(self.groups):
            raise IncaError(
                f"the tasks read {len(self.groups)} backbones; give pixels for each "
                f"({[b.name for b in self.backbones]}), got {len(pixels)}"
            )
        got: dict[str, Tensor] = {}
        for group, x in zip(self.groups, pixels, strict=True):
            got |= {n: p.float().cpu() for n, p in group.predict_proba(x).items()}
        out = {}
        for name, task in self.tasks.items():
            if hasattr(task, "parts"):
                out[name] = task.mix([got[p.name] for p in task.parts])
            else:
                out[name] = got[name]
        return out
