"""`inca classes add`: new classes for an Open-InCA task, trained on new data alone.

Only the new classes' queries and output units train (one member per learning rate, one-to-many
from the activation cache of the task's tap); the task's projections and old classes are frozen,
so their parameters stay bit-identical. The new data need hold only the new classes, as in real
class-incremental use. A task that stores its classes' mean token maps trains the new classes
against pseudo old-class samples made from them (``methods.open_inca.pseudo``); ``replay`` adds
up to that many real training images of each old class the data has (and their validation
images). The loss is class-balanced. The new classes get a projection set of their own
(``projections="new"``, measured better than the first step's frozen set: ``"shared"``). The
best rate on validation is kept and the task is written anew, atomically, with the new classes'
mean token maps.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inca.data import Splits, make_splits
from inca.data.splits import Subset
from inca.errors import IncaError
from inca.train.config import TrainConfig
from inca.train.select import accuracy, rank

DEFAULT_LRS = (1e-3, 3e-3)


def class_subset(subset: Subset, keep: set[int], per_class: dict[int, int] | None = None) -> Subset:
    """The images of ``subset`` whose label is in ``keep`` (at most ``per_class[label]`` of a
    label listed there, the first in subset order)."""
    taken: dict[int, int] = {}
    indices = []
    for i, y in zip(subset.indices, subset.labels, strict=True):
        y = int(y)
        if y not in keep:
            continue
        limit = (per_class or {}).get(y)
        if limit is not None and taken.get(y, 0) >= limit:
            continue
        taken[y] = taken.get(y, 0) + 1
        indices.append(i)
    return Subset(subset.dataset, np.asarray(indices, dtype=np.int64))


class RemappedSource:
    """A batch source whose labels (the dataset's class indices) become the task's."""

    def __init__(self, source: Any, table: torch.Tensor) -> None:
        self.source, self.table = source, table

    @property
    def backbone_seconds(self) -> float:
        return self.source.backbone_seconds

    def serve(self, members: Any) -> None:
        self.source.serve(members)

    def train(self, epoch: int):  # noqa: ANN201
        for x, y in self.source.train(epoch):
            yield x, self.table[y]

    def evaluate(self, split: str):  # noqa: ANN201
        for x, y in self.source.evaluate(split):
            yield x, self.table[y]


def add_classes(
    task_dir: str | Path,
    data: str,
    classes: list[str],
    out: str | Path | None = None,
    replay: int = 0,
    projections: str = "new",
    calibrate: bool = False,
    lrs: tuple[float, ...] = DEFAULT_LRS,
    weight_decay: float = 0.05,
    config: TrainConfig | None = None,
    sizes: tuple[int | None, float, int | None] = (None, 0.1, None),
    cache: str | Path | None = None,
    device: str = "auto",
    precision: str = "auto",
) -> dict[str, Any]:
    """Train ``classes`` of ``data`` into the Open-InCA task at ``task_dir`` (written to
    ``out``, default in place); returns the record (per rate validation accuracy, test
    accuracy over every class of the task the test split has, before and after).

    ``calibrate`` (needs ``replay``, which brings real old-class images): then fit a scale and
    a bias for each new class, and nothing else, on the validation images of every class, so
    the new classes' logits sit on the old ones' scale (BiC's bias correction). Off by default:
    measured on the protocol of ``inca bench-classes`` it moves errors between classes (-1.3
    to +0.3 points a step) rather than removing them.

    Split into its steps (it was one body of 116 lines): checking the request, the token
    source, pseudo old-class samples, training and choosing the rate, the (calibrated) test."""
    from inca.methods.open_inca.classes import with_token_means
    from inca.methods.open_inca.increment import NewClasses
    from inca.methods.open_inca.pseudo import balanced_weights, class_means
    from inca.tasks import Task, load_task
    from inca.tasks.open_classes import open_member

    config = config or TrainConfig(epochs=10, augment=False, progress=False)
    task = load_task(task_dir)
    member, tap, base = open_member(task)
    check_request(task, classes, projections, calibrate, replay)
    train_size, val_size, test_size = sizes
    splits = make_splits(data, train_size=train_size, val_size=val_size, test_size=test_size,
                         seed=config.seed)  # fmt: skip
    order = task.class_names + classes  # the task's classes after the addition
    chosen, table = chosen_splits(splits, data, classes, task.class_names, order, replay)

    out = Path(out or task_dir)
    work = Path(cache or out.parent / f".{out.name}.add")
    backbone, real = token_source(task, tap, chosen, table, config, work, device, precision)
    old = len(task.class_names)
    new_means = class_means(real, range(old, len(order)))  # (new, T, D)
    counts = torch.bincount(table[torch.from_numpy(chosen.train.labels)], minlength=len(order))
    source, pseudo = with_pseudo_old(real, base, new_means, counts, len(chosen.train), config.seed,
                                     task.name)  # fmt: skip
    members = NewClasses(base, tap, len(classes), list(lrs), weight_decay, config.seed,
                         new_set=projections == "new",
                         class_weights=balanced_weights(counts).to(backbone.device))  # fmt: skip
    members = members.to(backbone.device)
    signature = {"add": classes, "task": task.name, "replay": replay, "data": data,
                 "lrs": list(lrs), "projections": projections}  # fmt: skip
    # one train folder per projection option: both can share one token cache
    trainer, best = train_and_choose(members, source, config, chosen, work / f"train-{projections}",
                                     signature, backbone.device)  # fmt: skip
    grown = members.grown(best)
    if pseudo:  # every class's means kept, for the next addition
        grown = with_token_means(grown, torch.cat([base.token_means.cpu(), new_means]))
    new = torch.arange(old, len(order)) if calibrate else None
    test_probs, test_labels, calibration = tested(trainer, best, grown, real, new)
    record = {"added": classes, "replay": replay, "projections": projections, "pseudo_old": pseudo,
              "selected": best, "val_acc": dict(trainer.progress.best_acc),
              "calibration": calibration,
              **test_record(test_probs, test_labels, order)}  # fmt: skip
    new_task = Task(task.name, "open-inca", task.backbone_info, order, [(member, tap, grown)],
                    metrics=task.metrics | {"added": [*task.metrics.get("added", []), record]},
                    data=task.data)  # fmt: skip
    new_task.save(out)
    return record


def check_request(
    task: Any, classes: list[str], projections: str, calibrate: bool, replay: int
) -> None:
    """Refuse, before any data is read, an addition ``add_classes`` cannot make."""
    if len(set(classes)) != len(classes) or not classes:
        raise IncaError(f"give each new class once, at least one: got {classes}")
    known = [c for c in classes if c in task.class_names]
    if known:
        raise IncaError(f"task {task.name!r} has class(es) {known} already; add new ones")
    if projections not in ("new", "shared"):
        raise IncaError(f"projections must be 'new' or 'shared', got {projections!r}")
    if calibrate and replay <= 0:
        raise IncaError(
            "calibrating the new classes needs held-out images of the old ones; give --replay N"
        )


def with_pseudo_old(real: Any, base: Any, new_means: torch.Tensor, counts: torch.Tensor,
                    n_train: int, seed: int, task_name: str) -> tuple[Any, bool]:  # fmt: skip
    """The source the new classes train from, and whether it adds pseudo old-class samples:
    it does where the task stores its classes' mean token maps (``base``'s, as many tokens as
    ``new_means``), one pseudo old image per training image spread over the old classes, which
    ``counts`` (images per class, for the loss's class weights) then counts."""
    from inca.methods.open_inca.pseudo import PseudoOldSource

    if base.config.stat_tokens == new_means.shape[1]:
        old = counts.numel() - len(new_means)  # the task's classes before the addition
        source = PseudoOldSource(real, torch.cat([base.token_means.cpu(), new_means]), old, seed)
        counts[:old] += n_train // old
        return source, True
    if base.config.stat_tokens == 0:
        print(
            f"note: task {task_name!r} stores no class means (trained before they were "
            "kept, or by a plan): its new classes train without pseudo old-class samples"
        )
    return real, False


def train_and_choose(members: Any, source: Any, config: TrainConfig, chosen: Splits, work: Path,
                     signature: dict[str, Any], device: Any) -> tuple[Any, str]:  # fmt: skip
    """Train ``members`` one-to-many (resuming in ``work``), load each one's best epoch, and
    choose the member best on validation among those that did not diverge."""
    from inca.train.trainer import Trainer

    trainer = Trainer(members, source, config, len(chosen.train), work, signature, device,
                      num_val=len(chosen.val))  # fmt: skip
    trainer.fit(resume=True)
    trainer.load_best()
    best = rank(
        {n: a for n, a in trainer.progress.best_acc.items() if n not in trainer.progress.diverged}
    )[0]
    return trainer, best


def token_source(
    task: Any,
    tap: str,
    chosen: Splits,
    table: torch.Tensor,
    config: TrainConfig,
    work: Path,
    device: str,
    precision: str,
) -> tuple[Any, RemappedSource]:
    """The task's backbone, and the tokens of ``tap`` on ``chosen``'s real images (from the
    cache in ``work``, built on first use) with the task's labels: what training starts from,
    and what calibration and the test read."""
    from inca.tasks.multi import load_matching_backbone

    backbone = load_matching_backbone(task.backbone_info, device, precision)
    return backbone, cached_tap_source(backbone, chosen, tap, table, config, work)


def cached_tap_source(backbone: Any, chosen: Splits, tap: str, table: torch.Tensor,
                      config: TrainConfig, work: Path) -> RemappedSource:  # fmt: skip
    """The tokens of ``tap`` on ``chosen``'s images, from the cache in ``work`` (built on first
    use), with labels mapped through ``table`` to the task's."""
    from inca.cache.split_caches import open_caches
    from inca.train.batch_sources import TokenSource

    caches = open_caches(
        backbone, chosen, [tap], work / "cache", 1, "auto", config.eval_batch_size, config.seed,
        config.workers, config.progress,
    )  # fmt: skip
    return RemappedSource(TokenSource(backbone, chosen, [tap], config, caches), table)


def tested(
    trainer: Any, best: str, grown: Any, real: Any, new: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any] | None]:
    """The test probabilities of member ``best`` and their labels. With ``new`` (the new
    classes' indices), first fit their scale and bias in ``grown``, nothing else, on ``real``'s
    validation images, and return ``grown``'s calibrated test probabilities, and the fit's
    record with the test accuracy before it; else no record."""
    from inca.methods.open_inca.classes import fit_calibration_on_logits

    probs, labels = trainer.predict("test")
    probs = probs[best]
    if new is None:
        return probs, labels, None
    calibration = fit_calibration_on_logits(grown, *raw_split_logits(grown, real, "val"),
                                            only=new)  # fmt: skip
    calibration["test_acc_before"] = accuracy(probs, labels)
    raw, labels = raw_split_logits(grown, real, "test")
    probs = (raw * grown.calib_scale.cpu() + grown.calib_shift.cpu()).softmax(-1)
    return probs, labels, calibration


def raw_split_logits(adapter: Any, source: Any, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``adapter``'s uncalibrated logits (M, C) on the labelled images of ``source``'s
    ``split``, and their labels (M,)."""
    from inca.methods.open_inca.classes import raw_logits

    out, labels = [], []
    for x, y in source.evaluate(split):
        keep = y >= 0
        out.append(raw_logits(adapter, x[0][keep.to(x.device)].float()))
        labels.append(y[keep].cpu())
    return torch.cat(out), torch.cat(labels)


def test_record(probs: torch.Tensor, labels: torch.Tensor, order: list[str]) -> dict[str, Any]:
    """Test accuracy over every class, and per class (by name)."""
    hit = probs.argmax(-1) == labels
    by_class = {c: hit[labels == i].float().mean().item() for i, c in enumerate(order)
                if (labels == i).any()}  # fmt: skip
    return {"test_acc": accuracy(probs, labels), "test_images": len(labels),
            "test_acc_by_class": by_class}  # fmt: skip


def new_classes_task(
    data: str,
    classes: list[str],
    model: str,
    tap: str,
    out: str | Path,
    lrs: tuple[float, ...] = DEFAULT_LRS,
    weight_decay: float = 0.05,
    config: TrainConfig | None = None,
    sizes: tuple[int | None, float, int | None] = (None, 0.1, None),
    cache: str | Path | None = None,
    image_size: int | None = None,
    heads: int | None = None,
    device: str = "auto",
    precision: str = "auto",
) -> dict[str, Any]:
    """A new Open-InCA task over ``classes`` of ``data`` (its other classes left out), every
    parameter trained (the projections it freezes for classes added later): one member per
    learning rate, one-to-many from the cache, the best on validation saved at ``out``."""
    from inca.adapters import adapter_config
    from inca.backbones import load_backbone
    from inca.cache.split_caches import open_caches
    from inca.methods.open_inca.classes import with_token_means
    from inca.methods.open_inca.pseudo import class_means
    from inca.tasks import Task
    from inca.train.bank import AdapterBank
    from inca.train.batch_sources import TokenSource, token_dtype
    from inca.train.plan import AdapterSpec

    config = config or TrainConfig(epochs=10, augment=False, progress=False)
    size = {"image_size": image_size} if image_size else {}
    backbone = load_backbone(model, precision=precision, device=device, **size)
    backbone.validate_taps([tap])
    splits = make_splits(data, train_size=sizes[0], val_size=sizes[1], test_size=sizes[2],
                         seed=config.seed)  # fmt: skip
    chosen, table = chosen_splits(splits, data, classes, [], classes, 0)
    opts = {"heads": heads} if heads else {}
    specs = [AdapterSpec(f"open-inca.{tap}.lr{lr:g}", "open-inca", tap,
                         adapter_config("open-inca", opts), lr, weight_decay)
             for lr in lrs]  # fmt: skip
    bank = AdapterBank(specs, backbone.taps, len(classes), backbone.num_prefix_tokens,
                       seed=config.seed, token_dtype=token_dtype(backbone))  # fmt: skip
    bank = bank.to(backbone.device)
    out = Path(out)
    work = Path(cache or out.parent / f".{out.name}.new")
    caches = open_caches(
        backbone, chosen, [tap], work / "cache", 1, "auto", config.eval_batch_size, config.seed,
        config.workers, config.progress,
    )  # fmt: skip
    source = RemappedSource(TokenSource(backbone, chosen, bank.taps, config, caches), table)
    signature = {"new": classes, "data": data, "tap": tap, "lrs": list(lrs)}
    trainer, best = train_and_choose(bank, source, config, chosen, work / "train", signature,
                                     backbone.device)  # fmt: skip
    test_probs, test_labels = trainer.predict("test")
    record = {"classes": classes, "selected": best, "val_acc": dict(trainer.progress.best_acc),
              **test_record(test_probs[best], test_labels, classes)}  # fmt: skip
    name = out.name
    # each class's mean token map, kept so later additions train against pseudo old images
    adapter = with_token_means(bank.export_adapter(best),
                               class_means(source, range(len(classes))))  # fmt: skip
    Task.from_adapters(name, "open-inca", backbone, classes, [(name, tap, adapter)],
                       metrics={"trained": record}, data={"data": data}).save(out)  # fmt: skip
    return record


def chosen_splits(splits: Splits, data: str, classes: list[str], old_classes: list[str],
                  order: list[str], replay: int) -> tuple[Splits, torch.Tensor]:  # fmt: skip
    """The splits of ``classes`` (and, with ``replay``, up to that many training images of
    each of ``old_classes``), and the table mapping the dataset's labels to ``order``'s."""
    names = splits.class_names
    missing = [c for c in classes if c not in names]
    if missing:
        raise IncaError(f"{data} has no class(es) {missing}; its classes: {names}")
    new = {names.index(c) for c in classes}
    old = {names.index(c) for c in old_classes if c in names} if replay else set()
    seen = {names.index(c) for c in order if c in names}  # tested: every class the task has
    chosen = Splits(
        class_subset(splits.train, new | old, dict.fromkeys(old, replay)),
        class_subset(splits.val, new | old),
        class_subset(splits.test, seen),
    )
    counts = chosen.train.class_counts()
    empty = [names[i] for i in sorted(new) if counts[i] == 0]
    if empty:
        raise IncaError(f"class(es) {empty} have no training images in {data}; give some")
    table = torch.full((len(names),), -100, dtype=torch.long)  # -100: ignored by the loss
    for i, c in enumerate(names):
        if c in order:
            table[i] = order.index(c)
    return chosen, table


def trained_config(epochs: int, batch_size: int, seed: int, progress: bool) -> TrainConfig:
    """The budget ``inca classes add`` trains with: no augmentation (one cached view)."""
    return replace(TrainConfig(), epochs=epochs, batch_size=batch_size, seed=seed,
                   augment=False, progress=progress, warmup=0.1)  # fmt: skip
