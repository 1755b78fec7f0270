"""`CombinedTask`: one ensemble whose members read several backbones.

Each *part* is an ordinary task on one backbone (its members, weighted within the part). The
combined prediction is the weighted mean of the parts' probabilities::

    p(x) = sum_i w_i * part_i(x as backbone i sees it)       (sum_i w_i = 1)

A greedy selection over the union of two runs' members gives every member a weight; a part's
weight is the sum of its members' weights and its members keep their shares within it, so the
mixture is exactly the selected ensemble. Each backbone preprocesses the image its own way (size,
mean, std), so a caller runs every part's backbone once on its own pixels: ``inca serve`` runs
each part in its backbone's group, beside the other tasks on that backbone.

On disk it is one task directory: task.json's "parts" lists each part's backbone, weight and
own record; adapters.safetensors holds part i's tensors under "parts.{i}/".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from inca.errors import IncaError
from inca.tasks.multi import backbone_differences
from inca.tasks.storage import (
    TaskKind,
    kind_of_record,
    kind_of_task,
    register_task_kind,
    require,
)
from inca.utils.io import now_iso

PART_FIELDS = ("name", "method", "backbone", "weight")  # a part's own fields in task.json


class CombinedTask(nn.Module):
    """Tasks on different backbones predicting as one weighted ensemble.

    Args:
        name: the combined task's name.
        parts: single-backbone tasks (``Task``), one per backbone, all with the same classes in
            the same order.
        weights: one finite weight > 0 per part (scaled here to sum 1).
        metrics, data, created: as for ``Task``.
    """

    def __init__(
        self,
        name: str,
        parts: Sequence[Any],
        weights: Sequence[float],
        metrics: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
        created: str | None = None,
        method: str = "ensemble",
    ) -> None:
        super().__init__()
        if not isinstance(name, str) or not name:
            raise IncaError(f"a task needs a non-empty name, got {name!r}")
        if len(parts) < 2:
            raise IncaError(
                f"combined task {name!r} has {len(parts)} part(s); it combines tasks on two or "
                "more backbones (one backbone's members make an ordinary task)"
            )
        self.name, self.method = name, method
        self.class_names = [str(c) for c in parts[0].class_names]
        for part in parts:
            if isinstance(part, CombinedTask):
                raise IncaError(f"combined task {name!r}: a part cannot be combined itself")
            if list(part.class_names) != self.class_names:
                raise IncaError(
                    f"combined task {name!r}: part {part.name!r} has classes "
                    f"{list(part.class_names)[:5]}..., the first part {self.class_names[:5]}...; "
                    "combine tasks of the same classes in the same order"
                )
        for i, a in enumerate(parts):
            for b in parts[i + 1 :]:
                if not backbone_differences(a.backbone_info, b.backbone_info):
                    raise IncaError(
                        f"combined task {name!r}: parts {a.name!r} and {b.name!r} read the same "
                        "backbone; put their members in one part"
                    )
        self.parts = nn.ModuleList(parts)
        self.weights = _normalized(name, weights, len(parts))
        self.metrics, self.data = dict(metrics or {}), dict(data or {})
        self.created = created or now_iso()

    @property
    def backbone_infos(self) -> list[dict[str, Any]]:
        return [p.backbone_info for p in self.parts]

    @property
    def backbone_names(self) -> list[str]:
        return [p.backbone_info["name"] for p in self.parts]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, backbones={self.backbone_names}, weights={self.weights}"

    def mix(self, part_probs: Sequence[Tensor]) -> Tensor:
        """Each part's probabilities (B, C), in part order -> the combined (B, C)."""
        if len(part_probs) != len(self.parts):
            raise IncaError(
                f"combined task {self.name!r} has {len(self.parts)} parts, got "
                f"{len(part_probs)} probabilities; give one per part, in part order"
            )
        out = torch.zeros_like(part_probs[0], dtype=torch.float32)
        for w, p in zip(self.weights, part_probs, strict=True):
            out += w * p.float()
        return out

    def predict_proba(self, pixels: Sequence[Tensor], backbones: Sequence[Any]) -> Tensor:
        """Pixels for each part's backbone (B, 3, S_i, S_i), and those backbones -> (B, C).

        Each part runs on its own backbone's pass (``MultiTask``, which checks the backbone is
        the one the part was trained on)."""
        from inca.tasks.multi import MultiTask

        probs = []
        for part, x, backbone in zip(self.parts, pixels, backbones, strict=True):
            probs.append(MultiTask([part], backbone=backbone).predict_proba(x)[part.name])
        return self.mix(probs)

    def save(self, path: str | Path) -> Path:
        from inca.tasks.storage import save_task

        return save_task(self, path)


def _normalized(name: str, weights: Sequence[float], n: int) -> list[float]:
    values = [float(w) for w in weights] if not isinstance(weights, str) else []
    if len(values) != n or not all(math.isfinite(w) and w > 0 for w in values):
        raise IncaError(
            f"combined task {name!r}: give one finite weight > 0 per part ({n}), got {weights!r}"
        )
    total = math.fsum(values)
    return [w / total for w in values]


# ------------------------------------------------------------------ how it is stored
def _fields(task: CombinedTask) -> dict[str, Any]:
    parts = []
    for part, w in zip(task.parts, task.weights, strict=True):
        own = {"name": part.name, "method": part.method, "backbone": part.backbone_info}
        parts.append(own | {"weight": w} | kind_of_task(part).fields(part))
    return {"parts": parts}


def _tensors(task: CombinedTask) -> dict[str, Tensor]:
    return {
        f"parts.{i}/{key}": t
        for i, part in enumerate(task.parts)
        for key, t in kind_of_task(part).tensors(part).items()
    }


def _check(record: dict[str, Any], file: Path) -> None:
    require(record, file, "", parts=list)
    if len(record["parts"]) < 2:
        raise IncaError(f"{file} lists fewer than two parts; re-save the combined task")
    for i, part in enumerate(record["parts"]):
        where = f"parts[{i}]."
        if not isinstance(part, dict):
            raise IncaError(f"{file}: parts[{i}] is not an object; re-save the combined task")
        require(part, file, where, name=str, method=str, backbone=dict)
        require(part["backbone"], file, where + "backbone.", name=str, weights_hash=str,
                preprocess=dict, num_prefix_tokens=int)  # fmt: skip
        w = part.get("weight")
        if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w <= 0:
            raise IncaError(
                f"{file}: field {where}weight is {w!r}, not a finite number > 0; re-save the task"
            )
        kind_of_record(part, file).check(part, file)


def _read(record: dict[str, Any], tensors: dict[str, Tensor], path: Path) -> CombinedTask:
    parts, weights, used = [], [], set()
    for i, part in enumerate(record["parts"]):
        prefix = f"parts.{i}/"
        own = {k[len(prefix) :]: t for k, t in tensors.items() if k.startswith(prefix)}
        used.update(prefix + k for k in own)
        sub = {k: record.get(k) for k in ("class_names", "metrics", "data", "created")}
        sub |= {k: v for k, v in part.items() if k != "weight"}
        parts.append(kind_of_record(part, path).read(sub, own, path))
        weights.append(part["weight"])
    extra = sorted(set(tensors) - used)
    if extra:
        raise IncaError(
            f"{path}: the weights file holds tensors of no part ({', '.join(extra[:3])}); the "
            "files do not belong together: re-save the combined task"
        )
    return CombinedTask(
        record["name"], parts, weights, metrics=record.get("metrics"), data=record.get("data"),
        created=record.get("created"), method=record["method"],
    )  # fmt: skip


register_task_kind(CombinedTask, TaskKind("parts", _fields, _tensors, _check, _read,
                                          one_backbone=False))  # fmt: skip
