"""Accuracy of saved tasks on a dataset split, all tasks in one backbone pass per batch.

multi = MultiTask([load_task("runs/a/tasks/best"), load_task("runs/a/tasks/ensemble")])
test = run_split(multi.tasks[multi.task_names[0]], "test")  # the run's own test images
accuracies, n = evaluate_tasks(multi, test)  # {task name: top-1 accuracy}, number of images
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from inca.data import ImageTransform, Subset, make_loader, make_splits
from inca.errors import IncaError
from inca.tasks.by_backbone import MultiBackbone
from inca.tasks.finetuned import FineTunedTask
from inca.tasks.multi import MultiTask
from inca.tasks.task import Task
from inca.train.select import accuracy

SPLITS = ("train", "val", "test")


def run_split(task: Task | FineTunedTask, split: str) -> Subset:
    """The ``split`` of the run that trained ``task``, rebuilt from the data record it saved
    (dataset, sizes, seed): splits are deterministic, so these are the very same images."""
    if split not in SPLITS:
        raise IncaError(f"unknown split {split!r}; one of {', '.join(SPLITS)}")
    info = task.data
    if not {"data", "sizes", "seed"} <= info.keys():
        raise IncaError(
            f"task {task.name} does not record the data it was trained on (dataset, sizes, "
            "seed); evaluate it on a dataset given by name instead"
        )
    sizes = info["sizes"]
    spec = info.get("data_resolved") or info["data"]  # as the run found it, from anywhere
    splits = make_splits(
        spec,
        train_size=sizes["train"],
        val_size=sizes["val"],
        test_size=sizes["test"],
        seed=info["seed"],
        rule=info.get("split_rule", 1),  # tasks saved before the rule was recorded: rule 1
    )
    dataset = splits.test.dataset if split == "test" else splits.train.dataset
    recorded = info.get("test_fingerprint" if split == "test" else "fingerprint")
    if recorded is not None and dataset.fingerprint() != recorded:
        raise IncaError(
            f"the data at {spec!r} is not the data task {task.name} was trained on (its "
            f"{dataset.split} images differ: files added, removed or changed since); restore "
            "that data, or evaluate on other data by name with --data"
        )
    return getattr(splits, split)


def evaluate_tasks(
    multi: MultiTask | MultiBackbone,
    subset: Subset,
    batch_size: int = 128,
    progress: bool = True,
    workers: int | None = None,
) -> tuple[dict[str, float], int]:
    """Top-1 accuracy of every task of ``multi`` on ``subset`` -> ({task name: accuracy in
    [0, 1]}, number of images). Each batch runs each backbone once for all tasks on it (tasks
    trained through the backbone run their own pass; a combined task's parts run in their
    backbones' passes and are mixed). ``workers``: loader processes (None: default)."""
    for t in multi.tasks.values():
        if list(t.class_names) != list(subset.class_names):
            raise IncaError(
                f"task {t.name} knows classes {t.class_names[:5]}..., the data has "
                f"{subset.class_names[:5]}...; evaluate on data with its classes"
            )
    groups = [multi] if isinstance(multi, MultiTask) else multi.groups
    probs: dict[str, torch.Tensor] = {}
    for group in groups:  # one pass over the images per backbone
        got, y = _probabilities(group, subset, batch_size, progress, workers)
        probs |= got
    out = {}
    for name, task in multi.tasks.items():
        p = task.mix([probs[part.name] for part in task.parts]) if hasattr(task, "parts") else (
            probs[name])  # fmt: skip
        out[name] = accuracy(p, y)
    return out, len(y)


def _probabilities(
    multi: MultiTask, subset: Subset, batch_size: int, progress: bool, workers: int | None
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """{task of ``multi``: probabilities (N, C)} on ``subset``, in its order, and the labels."""
    loader = make_loader(
        subset,
        ImageTransform(multi.backbone.preprocess),
        batch_size=batch_size,
        num_workers=workers,
    )
    probs: dict[str, list[torch.Tensor]] = {n: [] for n in multi.task_names}
    labels = []
    desc = f"eval {multi.backbone.name}"
    for pixels, y, _ in tqdm(loader, desc=desc, unit="batch", disable=not progress):
        for n, p in multi.predict_proba(pixels).items():  # ONE backbone pass for all tasks
            probs[n].append(p.float().cpu())
        labels.append(y)
    if not labels:
        raise IncaError("nothing to evaluate: the dataset split is empty")
    return {n: torch.cat(p) for n, p in probs.items()}, torch.cat(labels)
