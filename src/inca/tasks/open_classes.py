"""Open-InCA tasks on disk: remove a class, merge two tasks, calibrate a merge on held-out data.

A task of one ``open-inca`` adapter is changed into a NEW task object; the caller saves it
(``Task.save`` replaces a directory atomically), so a refused operation leaves every file as it
was.
"""

from __future__ import annotations

from typing import Any

import torch

from inca.errors import IncaError
from inca.methods.open_inca.adapter import OpenInCAAdapter
from inca.methods.open_inca.classes import fit_calibration, merged, without_class


def open_member(task: Any) -> tuple[str, str, OpenInCAAdapter]:
    """(member name, tap, adapter) of an Open-InCA task; anything else is refused."""
    members = getattr(task, "member_names", [])
    adapter = task.member(members[0]) if len(members) == 1 else None
    if not isinstance(adapter, OpenInCAAdapter):
        raise IncaError(
            f"task {task.name!r} is not an Open-InCA task (one open-inca adapter); train one "
            'with --plan "open-inca taps=block.N" and use its tasks/best'
        )
    return members[0], task.member_taps[members[0]], adapter


def _task(like: Any, name: str, classes: list[str], tap: str, adapter: OpenInCAAdapter,
          metrics: dict, data: dict) -> Any:  # fmt: skip
    from inca.tasks import Task

    return Task(name, "open-inca", like.backbone_info, classes, [(name, tap, adapter)],
                metrics=metrics, data=data)  # fmt: skip


def remove_class(task: Any, class_name: str) -> Any:
    """``task`` without class ``class_name``: it never wins again, nothing else changes."""
    _, tap, adapter = open_member(task)
    if class_name not in task.class_names:
        raise IncaError(
            f"task {task.name!r} has no class {class_name!r}; its classes: {task.class_names}"
        )
    i = task.class_names.index(class_name)
    classes = [c for c in task.class_names if c != class_name]
    if not classes:
        raise IncaError(f"{class_name!r} is the last class of task {task.name!r}; keep it")
    removed = {"removed": [*task.metrics.get("removed", []), class_name]}
    return _task(task, task.name, classes, tap, without_class(adapter, i), removed, task.data)


def merge_tasks(a: Any, b: Any, name: str) -> Any:
    """One classifier over the classes of ``a`` then ``b`` (trained apart, on the same backbone
    and tap), each keeping its own projections; uncalibrated until ``calibrate``."""
    from inca.tasks.multi import backbone_differences

    _, tap_a, adapter_a = open_member(a)
    _, tap_b, adapter_b = open_member(b)
    diff = backbone_differences(a.backbone_info, b.backbone_info)
    if diff:
        raise IncaError(
            f"tasks {a.name!r} and {b.name!r} were trained on different backbones "
            f"({'; '.join(diff)}); merge tasks of one backbone"
        )
    if tap_a != tap_b:
        raise IncaError(
            f"task {a.name!r} reads {tap_a} and {b.name!r} reads {tap_b}; merge tasks trained "
            "on the same tap"
        )
    both = set(a.class_names) & set(b.class_names)
    if both:
        raise IncaError(
            f"tasks {a.name!r} and {b.name!r} both have class(es) {sorted(both)}; a merged "
            "classifier needs distinct class names (remove one side's first)"
        )
    return _task(a, name, a.class_names + b.class_names, tap_a, merged(adapter_a, adapter_b),
                 {}, {"merged_from": [a.name, b.name]})  # fmt: skip


Tokens = tuple[torch.Tensor, torch.Tensor]


def held_out_tokens(task: Any, data: str, size: int, seed: int = 0, split: str = "val") -> Tokens:
    """Normalised tokens of the task's tap (M, T, D) and labels in the task's class order, of
    up to ``size`` images of ``data``'s ``split`` (val or test) whose class the task has."""
    from inca.adapters import normalize_tokens
    from inca.data import ImageTransform, make_splits
    from inca.tasks.multi import load_matching_backbone

    _, tap, _ = open_member(task)
    splits = make_splits(data, val_size=size, test_size=size if split == "test" else None,
                         seed=seed)  # fmt: skip
    held = getattr(splits, split)
    names = held.dataset.class_names
    missing = sorted(set(task.class_names) - set(names))
    if missing:
        raise IncaError(
            f"{data} has no images of class(es) {missing} of task {task.name!r}; calibrate on "
            "data holding every class of the merged task"
        )
    backbone = load_matching_backbone(task.backbone_info, None, "auto")
    transform = ImageTransform(backbone.preprocess)
    rows = [i for i, y in zip(held.indices, held.labels, strict=True)
            if names[y] in task.class_names]  # fmt: skip
    labels = torch.tensor([task.class_names.index(names[held.dataset.labels[i]])
                           for i in rows])  # fmt: skip
    tokens = []
    for start in range(0, len(rows), 64):
        pixels = torch.stack([transform(held.dataset.load(i)) for i in rows[start : start + 64]])
        tokens.append(normalize_tokens(backbone.forward_taps(pixels, [tap])[tap]).cpu())
    return torch.cat(tokens), labels


def calibrate(task: Any, tokens: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Fit the task's per-class scale and bias (only those) on held-out tokens; the accuracy
    before and after is recorded in its metrics and returned."""
    _, _, adapter = open_member(task)
    result = fit_calibration(adapter, tokens, labels)
    task.metrics["calibration"] = result
    return result
