"""`inca classes new|add` with the analytic head (Open-InCA's default): classes from their own
images alone, and a head that is exactly the joint ridge over every image ever seen.

A task keeps its head's statistics (G, Q, images per class: ``methods.analytic.statistics``)
in ``statistics.safetensors`` beside its weights; no image is kept. ``new`` accumulates them
from the training images of its classes, ``add`` adds the new classes' images and columns and
solves again (λ by generalised cross-validation, from the statistics alone), so after any
number of steps, in any order, the head equals the joint solve. The old classes' rows of W are
refit by ``add`` (that is what lets them stay quiet on the new classes); ``remove`` leaves every
other row bit-identical; ``merge`` of two tasks sums their statistics (``tasks.open_classes``).
The tokens come from the task's tap through the activation cache, one pass, no epochs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from inca.data import make_splits
from inca.errors import IncaError
from inca.tasks.open_classes import STATISTICS, load_statistics, with_statistics
from inca.train.config import TrainConfig

__all__ = ["STATISTICS", "add_analytic_classes", "load_statistics", "new_analytic_task"]


def accumulate(head: Any, stats: Any, source: Any, split: str = "train") -> None:
    """Add the descriptors of ``source``'s labelled ``split`` images to ``stats`` (in place)."""
    for x, y in source.evaluate(split):
        keep = y >= 0
        if keep.any():
            stats.add(head.features_of(x[0][keep.to(x.device)]).cpu(), y[keep].cpu())


def predicted(head: Any, source: Any, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities (M, C) of ``head`` on ``source``'s labelled ``split`` images, and
    their labels (M,)."""
    probs, labels = [], []
    with torch.no_grad():
        for x, y in source.evaluate(split):
            keep = y >= 0
            if keep.any():
                probs.append(head(x[0][keep.to(x.device)].float()).softmax(-1).cpu())
                labels.append(y[keep].cpu())
    if not probs:
        return torch.zeros(0, head.num_classes), torch.zeros(0, dtype=torch.long)
    return torch.cat(probs), torch.cat(labels)


def solved_record(head: Any, source: Any, order: list[str], lam: float) -> dict[str, Any]:
    """Validation and test accuracy of a freshly solved ``head`` (the record ``new`` and
    ``add`` print and keep in the task's metrics)."""
    from inca.recipes.add_classes import test_record
    from inca.train.select import accuracy

    val_probs, val_labels = predicted(head, source, "val")
    val = accuracy(val_probs, val_labels) if len(val_labels) else float("nan")
    test = test_record(*predicted(head, source, "test"), order)
    return {"head": "analytic", "lam": lam, "selected": "closed form",
            "val_acc": {"closed form": val}, **test}  # fmt: skip


def new_analytic_task(
    data: str,
    classes: list[str],
    model: str,
    tap: str,
    out: str | Path,
    config: TrainConfig | None = None,
    sizes: tuple[int | None, float, int | None] = (None, 0.1, None),
    cache: str | Path | None = None,
    image_size: int | None = None,
    cells: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    **_: Any,
) -> dict[str, Any]:
    """A new Open-InCA task with the analytic head over ``classes`` of ``data``, saved at
    ``out`` with its statistics; returns its record. (Options of the trained head, such as
    learning rates, are accepted and unused: nothing is trained.)"""
    from inca.backbones import load_backbone
    from inca.methods.analytic import AnalyticConfig, AnalyticHead, RidgeStatistics
    from inca.recipes.add_classes import cached_tap_source, chosen_splits
    from inca.tasks import Task

    config = config or TrainConfig(epochs=1, augment=False, progress=False)
    size = {"image_size": image_size} if image_size else {}
    backbone = load_backbone(model, precision=precision, device=device, **size)
    backbone.validate_taps([tap])
    splits = make_splits(data, train_size=sizes[0], val_size=sizes[1], test_size=sizes[2],
                         seed=config.seed)  # fmt: skip
    chosen, table = chosen_splits(splits, data, classes, [], classes, 0)
    info, prefix = backbone.taps[tap], backbone.num_prefix_tokens
    head = AnalyticHead(AnalyticConfig(cells=cells), info.dim, len(classes), prefix,
                        patch_tokens=info.tokens - prefix)  # fmt: skip
    out = Path(out)
    work = Path(cache or out.parent / f".{out.name}.new")
    source = cached_tap_source(backbone, chosen, tap, table, config, work)
    stats = RidgeStatistics.empty(head.features, len(classes))
    accumulate(head, stats, source)
    weight, lam = stats.solve()
    head = head.set_solution(weight, lam)
    record = {"classes": classes, **solved_record(head, source, classes, lam)}
    task = Task.from_adapters(out.name, "open-inca", backbone, classes, [(out.name, tap, head)],
                              metrics={"trained": record}, data={"data": data})  # fmt: skip
    with_statistics(task, stats).save(out)
    return record


def add_analytic_classes(
    task_dir: str | Path,
    data: str,
    classes: list[str],
    out: str | Path | None = None,
    config: TrainConfig | None = None,
    sizes: tuple[int | None, float, int | None] = (None, 0.1, None),
    cache: str | Path | None = None,
    device: str = "auto",
    precision: str = "auto",
    **_: Any,
) -> dict[str, Any]:
    """``classes`` of ``data`` (their images only) added to the analytic task at ``task_dir``
    and the head solved again over every class; written to ``out`` (default in place) with its
    statistics; returns the record."""
    from inca.recipes.add_classes import check_request, chosen_splits, token_source
    from inca.tasks import Task, load_task
    from inca.tasks.open_classes import open_member

    config = config or TrainConfig(epochs=1, augment=False, progress=False)
    task = load_task(task_dir)
    member, tap, head = open_member(task)
    check_request(task, classes, "new", False, 0)
    stats = load_statistics(task_dir).with_classes(len(classes))
    splits = make_splits(data, train_size=sizes[0], val_size=sizes[1], test_size=sizes[2],
                         seed=config.seed)  # fmt: skip
    order = task.class_names + classes
    chosen, table = chosen_splits(splits, data, classes, task.class_names, order, 0)
    out = Path(out or task_dir)
    work = Path(cache or out.parent / f".{out.name}.add")
    _, source = token_source(task, tap, chosen, table, config, work, device, precision)
    accumulate(head, stats, source)
    weight, lam = stats.solve()
    grown = head.set_solution(weight, lam)
    record = {"added": classes, "replay": 0, "calibration": None,
              "refit": "every class's row of the shared ridge head (the old classes' too)",
              **solved_record(grown, source, order, lam)}  # fmt: skip
    new_task = Task(task.name, "open-inca", task.backbone_info, order, [(member, tap, grown)],
                    metrics=task.metrics | {"added": [*task.metrics.get("added", []), record]},
                    data=task.data)  # fmt: skip
    with_statistics(new_task, stats).save(out)
    return record


def refuse_trained_options(replay: int, calibrate: bool) -> None:
    """Options of the trained (queries) head that the analytic head cannot honour."""
    if replay:
        raise IncaError(
            "--replay does not apply to an analytic task: it keeps the statistics of every old "
            "image already, so replayed images would count twice; drop --replay"
        )
    if calibrate:
        raise IncaError(
            "--calibrate does not apply to an analytic task: its head is one joint solve, on one "
            "scale already; drop --calibrate"
        )
