"""`MultiTask`: one frozen-backbone pass serves every loaded task.

The backbone is nearly all the cost of a prediction and the adapters almost none, so N tasks on
one backbone cost one forward pass (of the union of their taps, stopping after the deepest),
each tap normalised once, then N sets of cheap adapters. That only holds if every task was
trained on the very same backbone tokens: same model, same weights, same preprocessing. Tasks
that differ in any of these are refused rather than silently served wrong tokens.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from inca.adapters import normalize_tokens
from inca.adapters.tap_groups import tap_parts
from inca.backbones.base import Backbone
from inca.backbones.registry import load_backbone
from inca.data.views import expand_views, mean_over_views, union_views
from inca.errors import IncaError
from inca.tasks.finetuned import FineTunedTask  # noqa: F401  (registers its task kind)
from inca.tasks.stacked import StackedTasks
from inca.tasks.storage import load_task
from inca.tasks.task import Task, backbone_info


def _canonical(info: dict[str, Any]) -> dict[str, Any]:
    """Backbone info as JSON would give it back (tuples -> lists), for comparing."""
    pre = {k: list(v) if isinstance(v, tuple) else v for k, v in info["preprocess"].items()}
    return {
        "name": info["name"],
        "weights_hash": info["weights_hash"],
        "preprocess": pre,
        "num_prefix_tokens": info["num_prefix_tokens"],
    }


def backbone_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """What differs between two backbone infos, as readable "what: a vs b" phrases."""
    a, b = _canonical(a), _canonical(b)
    out = [
        f"{key.replace('_', ' ')} {a[key]!r} vs {b[key]!r}"
        for key in ("name", "weights_hash", "num_prefix_tokens")
        if a[key] != b[key]
    ]
    pa, pb = a["preprocess"], b["preprocess"]
    for key in sorted(pa.keys() | pb.keys()):
        if pa.get(key) != pb.get(key):
            out.append(f"{key.replace('_', ' ')} {pa.get(key)!r} vs {pb.get(key)!r}")
    return out


class MultiTask:
    """Several tasks served by one backbone pass per batch.

    Args:
        tasks: ``Task`` objects or task directories; names must be unique (two tasks with one
            name would make the results ambiguous, so that is an error). They are moved to the
            backbone's device in float32 and put in eval mode.
        backbone: the shared backbone; None loads the one the tasks were trained on.
        device, precision: where and how to run a backbone loaded here.
    """

    def __init__(
        self,
        tasks: Sequence[Task | str | os.PathLike],
        backbone: Backbone | None = None,
        device: str | torch.device | None = None,
        precision: str | None = "auto",
    ) -> None:
        loaded = [t if hasattr(t, "class_names") else load_task(t) for t in tasks]
        if not loaded:
            raise IncaError("MultiTask needs at least one task")
        for task in loaded:
            if hasattr(task, "backbone_infos"):  # a CombinedTask
                raise IncaError(
                    f"task {task.name!r} combines backbones {task.backbone_names}; one backbone "
                    "pass cannot serve it: predict with CombinedTask.predict_proba, or serve it "
                    "(inca serve), which runs each backbone once per batch"
                )
        self.tasks: dict[str, Task] = {}
        for task in loaded:
            if task.name in self.tasks:
                raise IncaError(
                    f"two tasks are both named {task.name!r}; predictions are keyed by task name, "
                    "so rename one (task.name = ..., or the 'name' field of its task.json)"
                )
            self.tasks[task.name] = task
        first = loaded[0]
        for task in loaded[1:]:
            diff = backbone_differences(first.backbone_info, task.backbone_info)
            if diff:
                raise IncaError(
                    f"tasks {first.name!r} and {task.name!r} were trained on different backbones "
                    f"({'; '.join(diff)}); one pass cannot serve both: serve them with separate "
                    "MultiTask objects"
                )
        info = first.backbone_info
        if backbone is None:
            backbone = load_matching_backbone(info, device, precision)
        else:
            diff = backbone_differences(info, backbone_info(backbone))
            if diff:
                raise IncaError(
                    f"the given backbone is not the one the tasks were trained on "
                    f"(tasks vs given: {'; '.join(diff)}); pass that backbone, or backbone=None "
                    "to load it"
                )
        self.backbone = backbone
        # tasks trained through the backbone (fine-tuned, VQT) cannot share its plain pass
        self.separate = [t.name for t in loaded if getattr(t, "own_pass", False)]
        for name in self.separate:
            why = (
                "changes the backbone's weights"
                if self.tasks[name].changes_backbone
                else "reads its query tokens inside every block"
            )
            print(f"inca: task {name!r} {why}: it runs its own pass")
        self.taps = list(dict.fromkeys(tap for t in loaded for tap in t.taps))
        self._check_taps()
        for task in loaded:
            if task.name not in self.separate:
                task.to(device=backbone.device, dtype=torch.float32).eval()
        # every adapter task's members in a few stacks: one batched call each, not N tasks
        self.stacked = StackedTasks({n: t for n, t in self.tasks.items() if n not in self.separate})

    def _check_taps(self) -> None:
        taps = self.backbone.taps
        for task in self.tasks.values():
            if task.name in self.separate:
                continue
            for member, tap in task.member_taps.items():
                width = task.member(member).in_dim
                if any(p not in taps or taps[p].dim != width for p in tap_parts(tap)):
                    raise IncaError(
                        f"task {task.name!r}, member {member!r} reads tap {tap!r} of width "
                        f"{width}, which backbone {self.backbone.name} does not have; the task "
                        "files were edited or mixed up: re-save the task"
                    )

    @property
    def task_names(self) -> list[str]:
        return list(self.tasks)

    def predict_proba(self, pixels: Tensor) -> dict[str, Tensor]:
        """Pixels (B, 3, S, S) -> {task name: probabilities (B, C)} on the backbone's device.

        One ``forward_taps`` call for all tasks; each tap normalised once for all of them. A
        task with test-time views gets the mean over its views: the pass then runs on every
        view any task needs (V * B images).
        """
        out: dict[str, Tensor] = {}
        if self.taps:  # ONE frozen pass for every adapter task (and every view it averages)
            shared = [t for n, t in self.tasks.items() if n not in self.separate]
            views = union_views([t.view_set for t in shared])
            x = expand_views(pixels, views)  # (V * B, 3, S, S), view-major
            tokens = self.backbone.forward_taps(x, self.taps)  # {tap: (V * B, T, D)}
            with torch.inference_mode():
                normed = {tap: normalize_tokens(t) for tap, t in tokens.items()}  # float32
                for name, p in self.stacked.forward_normalized(normed).items():
                    out[name] = mean_over_views(p, views, self.tasks[name].view_set)
        for name in self.separate:  # each fine-tuned task: its own pass
            out[name] = self.tasks[name].predict_pixels(pixels, self.backbone)
        return {name: out[name] for name in self.tasks}

    def predict(self, pixels: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        """Pixels (B, 3, S, S) -> {task name: (labels (B,) int64, probabilities (B, C))}."""
        return {name: (p.argmax(-1), p) for name, p in self.predict_proba(pixels).items()}


def load_matching_backbone(
    info: dict[str, Any], device: str | torch.device | None, precision: str | None
) -> Backbone:
    """The backbone named in ``info``, at its image size; refused if its weights changed."""
    pre = info["preprocess"]
    backbone = load_backbone(
        info["name"], image_size=pre["image_size"], device=device, precision=precision
    )
    if backbone.weights_hash != info["weights_hash"]:
        raise IncaError(
            f"the weights of backbone {info['name']!r} have changed since the tasks were trained "
            f"(weights hash {info['weights_hash']} then, {backbone.weights_hash} now); load the "
            "weights they were trained with, or re-train the tasks"
        )
    diff = backbone_differences(info, backbone_info(backbone))
    if diff:  # trained with non-default preprocessing (e.g. another resize mode): ask for it
        options = {
            k: tuple(v) if isinstance(v, list) else v
            for k, v in pre.items()
            if k not in ("image_size", "patch_size")
        }
        try:
            backbone = load_backbone(
                info["name"],
                image_size=pre["image_size"],
                device=device,
                precision=precision,
                **options,
            )
        except (TypeError, IncaError):
            pass
        diff = backbone_differences(info, backbone_info(backbone))
    if diff:
        raise IncaError(
            f"backbone {info['name']!r} loads differently from when the tasks were trained "
            f"(then vs now: {'; '.join(diff)}); load it yourself to match and pass backbone=..."
        )
    return backbone
