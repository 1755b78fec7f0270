"""Open-InCA tasks on disk: remove a class, merge two tasks, calibrate a merge on held-out data.

Two heads: the analytic head (the default of ``inca classes new``; ``methods.analytic``),
whose task keeps its statistics beside its weights, and the trained per-class queries
(``methods.open_inca``). Removing a class leaves every other class's parameters bit-identical
with both; merging two analytic tasks sums their statistics and solves once (exactly the joint
head, nothing to calibrate), merging trained tasks puts their classes side by side.

A task of one ``open-inca`` adapter is changed into a NEW task object; the caller saves it
(``Task.save`` replaces a directory atomically), so a refused operation leaves every file as it
was.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from inca.errors import IncaError
from inca.methods.open_inca.adapter import OpenInCAAdapter
from inca.methods.open_inca.classes import fit_calibration, merged, without_class

STATISTICS = "statistics.safetensors"


def load_statistics(task_dir: str | Path, need: bool = True) -> Any:
    """The ``RidgeStatistics`` an analytic task keeps in ``task_dir`` (None if it has none and
    not ``need``; else a clear error)."""
    from inca.methods.analytic import RidgeStatistics
    from inca.tasks.storage import read_side_file

    tensors = read_side_file(task_dir, STATISTICS)
    if tensors is None:
        if need:
            raise IncaError(
                f"{Path(task_dir) / STATISTICS} is missing: the task can serve, but its classes "
                "cannot change without the statistics they were solved from; re-create it with "
                "`inca classes new`"
            )
        return None
    return RidgeStatistics.from_tensors(tensors, str(Path(task_dir) / STATISTICS))


def with_statistics(task: Any, stats: Any) -> Any:
    """``task``, saving ``stats`` beside its weights from now on."""
    task.side_files = {STATISTICS: stats.tensors()}
    return task


def open_member(task: Any) -> tuple[str, str, Any]:
    """(member name, tap, head) of an Open-InCA task (an ``OpenInCAAdapter`` or an
    ``AnalyticHead``); anything else is refused."""
    from inca.methods.analytic import AnalyticHead

    members = getattr(task, "member_names", [])
    adapter = task.member(members[0]) if len(members) == 1 else None
    if not isinstance(adapter, OpenInCAAdapter | AnalyticHead):
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


def is_analytic(task: Any) -> bool:
    from inca.methods.analytic import AnalyticHead

    return isinstance(open_member(task)[2], AnalyticHead)


def remove_class(task: Any, class_name: str, stats: Any = None) -> Any:
    """``task`` without class ``class_name``: it never wins again, nothing else changes.
    ``stats``: an analytic task's statistics, which lose the class's column (its images stay
    as background) and are saved with the new task."""
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
    if not is_analytic(task):
        return _task(task, task.name, classes, tap, without_class(adapter, i), removed, task.data)
    new = _task(task, task.name, classes, tap, adapter.without_class(i), removed, task.data)
    return new if stats is None else with_statistics(new, stats.without_class(i))


def merge_tasks(a: Any, b: Any, name: str, stats_a: Any = None, stats_b: Any = None) -> Any:
    """One classifier over the classes of ``a`` then ``b`` (made apart, on the same backbone
    and tap). Analytic tasks (``stats_a``/``stats_b``: their statistics, required): the
    statistics summed and solved once, the joint head exactly. Trained ones: each keeps its
    own projections, uncalibrated until ``calibrate``."""
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
    source = {"merged_from": [a.name, b.name]}
    kinds = {is_analytic(a), is_analytic(b)}
    if kinds == {False}:
        return _task(a, name, a.class_names + b.class_names, tap_a,
                     merged(adapter_a, adapter_b), {}, source)  # fmt: skip
    if kinds != {True} or adapter_a.config.cells != adapter_b.config.cells:
        raise IncaError(
            f"tasks {a.name!r} and {b.name!r} have different heads ({adapter_a.config.kind}, "
            f"{adapter_b.config.kind}; cells {getattr(adapter_a.config, 'cells', '-')}, "
            f"{getattr(adapter_b.config, 'cells', '-')}); merge tasks made the same way"
        )
    if stats_a is None or stats_b is None:
        raise IncaError(
            f"task {(b if stats_a is not None else a).name!r} has no statistics file: analytic "
            "tasks merge through their statistics; re-create it with `inca classes new`"
        )
    stats = stats_a.merged(stats_b)
    weight, lam = stats.solve()
    head = adapter_a.set_solution(weight, lam)
    task = _task(a, name, a.class_names + b.class_names, tap_a, head, {"lam": lam}, source)
    return with_statistics(task, stats)


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
