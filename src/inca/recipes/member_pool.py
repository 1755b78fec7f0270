"""Every member of a run, kept for ensembles across runs: ``members/`` in the run directory.

    runs/X/members/             a task (``load_task`` reads it) holding each kept member
      task.json, adapters.safetensors
      predictions.safetensors   "val/{member}", "test/{member}": (N, C) float16 probabilities
                                in split order; "val_labels", "test_labels": (N,) int64

Selection inside the run saw these very probabilities. ``inca ensemble RUN_A RUN_B`` selects
over the union of several runs' members on validation without running a backbone again, and
reports test once (``inca.recipes.cross_ensemble``).

Members are kept best first by validation accuracy while their predictions fit in
``MAX_BYTES`` (the run's own ensemble always): a run of 1,000 classes and a large test set keeps
its strongest members rather than writing gigabytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from inca.backbones import Backbone
from inca.data import Splits
from inca.errors import IncaError
from inca.tasks.storage import load_task, read_side_file
from inca.tasks.task import Task
from inca.train.candidate import Candidate
from inca.train.select import rank

POOL_DIR, PREDICTIONS = "members", "predictions.safetensors"
MAX_BYTES = 512 * 2**20
SPLITS = ("val", "test")


def kept_members(members: dict[str, Candidate], must_keep: list[str], max_bytes: int) -> list[str]:
    """Names to keep, best validation accuracy first, while their float16 probabilities fit in
    ``max_bytes``; ``must_keep`` (the run's ensemble) whatever they cost."""
    order = rank({n: m.val_acc for n, m in members.items()})
    kept, used = list(must_keep), 0
    for n in kept:
        used += 2 * (members[n].val_probs.numel() + members[n].test_probs.numel())
    for n in order:
        if n in kept:
            continue
        size = 2 * (members[n].val_probs.numel() + members[n].test_probs.numel())
        if used + size > max_bytes:
            break
        kept.append(n)
        used += size
    return [n for n in order if n in kept]


def save_member_pool(
    backbone: Backbone,
    splits: Splits,
    members: dict[str, Candidate],
    must_keep: list[str],
    data: dict[str, Any],
    out: Path,
    max_bytes: int = MAX_BYTES,
    views: str = "none",
) -> Path:
    """``out/members``: the kept members as one task (averaging over the test ``views`` their
    probabilities were averaged over), their probabilities beside them."""
    names = kept_members(members, must_keep, max_bytes)
    task = Task.from_adapters(
        f"{data['data']}-members", "members", backbone, splits.class_names,
        [(n, members[n].spec.tap, members[n].adapter) for n in names], data=data, views=views,
    )  # fmt: skip
    predictions = {
        "val_labels": torch.as_tensor(splits.val.labels, dtype=torch.long),
        "test_labels": torch.as_tensor(splits.test.labels, dtype=torch.long),
    }
    for n in names:
        predictions[f"val/{n}"] = members[n].val_probs.to(torch.float16)
        predictions[f"test/{n}"] = members[n].test_probs.to(torch.float16)
    task.side_files = {PREDICTIONS: predictions}
    return task.save(out / POOL_DIR)


@dataclass
class MemberPool:
    """A run's kept members and their probabilities on each split (float32, split order)."""

    run: Path
    task: Task
    probs: dict[str, dict[str, Tensor]]  # split -> {member: (N, C)}
    labels: dict[str, Tensor]  # split -> (N,)

    @property
    def backbone(self) -> str:
        return self.task.backbone_info["name"]


def load_member_pool(run: str | Path) -> MemberPool:
    """The member pool of run directory ``run``; a clear error when it has none or it is
    damaged."""
    run = Path(run).expanduser()
    where = run / POOL_DIR
    if not (where / "task.json").is_file():
        what = "is not a run directory" if not (run / "results.json").is_file() else (
            "has no members/ (runs before inca kept them): resume it with the options it ran "
            f"with (`inca train --resume --out {run} ...`) to write it without training again"
        )  # fmt: skip
        raise IncaError(f"{run} {what}")
    task = load_task(where)
    tensors = read_side_file(where, PREDICTIONS)
    if tensors is None:
        raise IncaError(f"{where / PREDICTIONS} is missing; resume the run to write it again")
    probs: dict[str, dict[str, Tensor]] = {s: {} for s in SPLITS}
    labels = {}
    for split in SPLITS:
        key = f"{split}_labels"
        if key not in tensors:
            raise IncaError(f"{where / PREDICTIONS} holds no {key}; resume the run to rewrite it")
        labels[split] = tensors[key].long()
        for n in task.member_names:
            p = tensors.get(f"{split}/{n}")
            if p is None or tuple(p.shape) != (len(labels[split]), task.num_classes):
                raise IncaError(
                    f"{where / PREDICTIONS}: the {split} probabilities of member {n!r} are missing "
                    "or of the wrong shape; the files do not belong together: resume the run"
                )
            probs[split][n] = p.float()
    return MemberPool(run, task, probs, labels)
