"""Training a method from pixels in the same harness as InCA: the same ``Trainer``, data, splits,
seeds, batch order, augmentation, schedule and selection rules (best validation epoch; test
once). A run is one member; a learning-rate sweep that shares the backbone's pass (VQT) is one
member per rate. What differs between methods, their registered behaviour says
(``inca.methods.pixel_method``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from inca.backbones.base import Backbone
from inca.data import Splits
from inca.errors import DivergedError, warn
from inca.methods.pixel_config import FineTuneConfig
from inca.methods.pixel_method import PixelMethod, pixel_method
from inca.train.batch_sources import PixelSource
from inca.train.config import TrainConfig
from inca.train.metrics import balanced_accuracy
from inca.train.pixel_members import ModelMembers, predict_model
from inca.train.select import accuracy
from inca.train.trainer import Trainer


def member_name(ft: FineTuneConfig) -> str:
    return f"lr{ft.lr:g}"


def fine_tune(
    backbone: Backbone,
    splits: Splits,
    ft: FineTuneConfig,
    config: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train ``ft`` for ``config.epochs``; returns the model at its best validation epoch and
    its record (accuracies, time, trainable parameters). Logs to ``out_dir/log.jsonl`` and
    checkpoints every epoch there; ``resume`` continues from the last one (a finished run
    returns at once)."""
    return _train(backbone, splits, [ft], config, Path(out_dir), resume)[0]


def fine_tune_sweep(
    backbone: Backbone,
    splits: Splits,
    ft: FineTuneConfig,
    lrs: list[float],
    config: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
) -> list[tuple[nn.Module, dict[str, Any]]]:
    """``ft`` at each of ``lrs``: (model, record) per rate, in order. Runs that can share the
    frozen backbone's pass (VQT) train together in ``out_dir/lr<a>+<b>...``; the others run
    one after another in ``out_dir/lr<rate>``.
    A rate whose run diverged is left out (with a warning); all of them diverging is an error.
    """
    out_dir, configs = Path(out_dir), [dataclasses.replace(ft, lr=lr) for lr in lrs]
    if pixel_method(ft).shares_pass(ft, lrs):
        name = "lr" + "+".join(f"{lr:g}" for lr in lrs)
        trained = _train(backbone, splits, configs, config, out_dir / name, resume)
    else:
        trained = []
        for c in configs:
            try:
                trained += _train(backbone, splits, [c], config, out_dir / f"lr{c.lr:g}", resume)
            except DivergedError as e:
                warn(f"lr {c.lr:g} left out of the sweep: {e}")
    trained = [(m, r) for m, r in trained if not r.get("diverged_at")]
    if not trained:
        raise DivergedError(f"every learning rate of {lrs} diverged; try lower ones")
    return trained


def _train(
    backbone: Backbone,
    splits: Splits,
    fts: list[FineTuneConfig],
    config: TrainConfig,
    out_dir: Path,
    resume: bool,
) -> list[tuple[nn.Module, dict[str, Any]]]:
    """Train one model, or (several configs) a one-pass sweep whose members each keep their own
    best validation epoch."""
    num_classes, behaviour = len(splits.class_names), pixel_method(fts[0])
    torch.manual_seed(config.seed)
    if len(fts) == 1:
        model = behaviour.build(backbone, num_classes, fts[0]).to(backbone.device)
    else:
        model = behaviour.build_sweep(backbone, num_classes, fts, config.seed).to(backbone.device)
    behaviour.seed(model, config.seed)  # what the method draws (StochCA's blocks)
    names = [member_name(ft) for ft in fts]
    members = ModelMembers(model, names, backbone.precision)
    signature = {"finetune": _signed(fts), "sizes": splits.sizes()}
    trainer = Trainer(
        members, PixelSource(backbone, splits, config), config, len(splits.train), out_dir,
        signature, backbone.device, num_val=len(splits.val),
    )  # fmt: skip
    print(f"{fts[0].method}: {len(names)} member(s) ({', '.join(names)}) in {out_dir}")
    trainer.fit(resume=resume)
    trainer.load_best()
    return [
        (part, _record(part, trainer, name, splits, backbone, config, behaviour))
        for part, name in zip(members.parts, names, strict=True)
    ]


def _signed(fts: list[FineTuneConfig]) -> Any:
    """The options a checkpoint is signed with (a list for a sweep)."""
    return fts[0].to_dict() if len(fts) == 1 else [ft.to_dict() for ft in fts]


def _record(
    model: nn.Module,
    trainer: Trainer,
    name: str,
    splits: Splits,
    backbone: Backbone,
    config: TrainConfig,
    behaviour: PixelMethod,
) -> dict[str, Any]:
    """A trained model's record; the method's refit after training (VQT's feature selection)
    happens here."""
    ft, progress, refit = model.config, trainer.progress, {}
    score = progress.best_acc[name]  # the --metric's value at the best epoch
    best_acc = score
    if config.metric != "accuracy" and name in trainer.best_val_probs:
        best_acc = accuracy(trainer.best_val_probs[name], trainer.val_labels)
    if name not in progress.diverged:
        batches = PixelSource(backbone, splits, config, sharded=False).evaluate("train")
        refit = behaviour.refit(model, batches, len(splits.class_names))
    if refit:
        refit["val_acc_before_selection"] = best_acc
        probs, val_labels = predict_model(model, backbone, splits, config, "val")
        best_acc = accuracy(probs, val_labels)  # a refit is judged by accuracy
        score = best_acc if config.metric == "accuracy" else score
        done = ", ".join(f"{k} {v}" for k, v in refit.items() if k != "val_acc_before_selection")
        print(f"{ft.method}: refitted ({done}): val {100 * best_acc:.2f}%")
    if name in progress.diverged:
        refit["diverged_at"] = progress.diverged[name]
    balanced = {}  # the best epoch's, unless a refit changed the model since
    if name in trainer.best_val_probs and "val_acc_before_selection" not in refit:
        balanced["val_balanced_acc"] = balanced_accuracy(
            trainer.best_val_probs[name], trainer.val_labels
        )
    return {
        **refit,
        **balanced,
        "val_acc": best_acc,
        "val_score": score,
        "metric": config.metric,
        "best_epoch": progress.best_epoch[name],
        "train_time_s": progress.train_seconds,
        "train_images_per_s": progress.images_seen / max(progress.train_seconds, 1e-9),
        "trainable_params": model.trainable_params(),
        "config": ft.to_dict(),
    }
