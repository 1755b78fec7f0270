"""Training a fine-tuning method in the same harness as InCA: the same ``Trainer``, data, splits,
seeds, batch order, augmentation, schedule and selection rules (best validation epoch; test
once). A run is one member; a VQT learning-rate sweep that shares the backbone's pass is one
member per rate."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from inca.backbones.base import Backbone
from inca.data import Splits
from inca.errors import DivergedError, IncaError, warn
from inca.methods.pixel_config import FineTuneConfig, build_model
from inca.methods.vqt.sweep import VQTSweep
from inca.train.batch_sources import PixelSource
from inca.train.config import TrainConfig
from inca.train.select import accuracy
from inca.train.split_predictions import predict_all
from inca.train.trainer import Trainer
from inca.utils.device import Precision

GENERATOR = "stochca/generator"  # StochCA's draws, in the checkpoint: a resumed run draws on


class ModelMembers(nn.Module):
    """A fine-tuning model as the trainer's members: ``model`` is one member (``names`` has one
    name) or a VQT sweep, ``model.members[g]`` being member ``names[g]``. Its weights stay fp32;
    it computes under ``precision.mixed()``, the autocast the user's precision asks for."""

    def __init__(self, model: nn.Module, names: list[str], precision: Precision) -> None:
        super().__init__()
        self.model, self._names, self.precision = model, list(names), precision
        self.parts = [model] if len(names) == 1 else list(model.members)

    @property
    def names(self) -> list[str]:
        return list(self._names)

    def forward_batch(self, pixels: Tensor) -> dict[str, Tensor]:
        with self.precision.mixed():
            logits = self.model(pixels)  # (B, C), or (G, B, C) for a sweep
        if len(self._names) == 1:
            return {self._names[0]: logits}
        return dict(zip(self._names, logits.unbind(0), strict=True))

    def param_groups(self) -> list[dict[str, Any]]:
        return self.model.param_groups()

    def member_state(self, name: str) -> dict[str, Tensor]:
        return self.parts[self._names.index(name)].changed_state()

    def load_member_state(self, name: str, state: dict[str, Tensor]) -> None:
        self.parts[self._names.index(name)].load_changed_state(state)

    def checkpoint_state(self) -> dict[str, Tensor]:
        state = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        stochca = getattr(self.model, "stochca", None)
        if stochca is not None:
            state[GENERATOR] = stochca.generator.get_state()
        return state

    @torch.no_grad()
    def load_checkpoint_state(self, state: dict[str, Tensor]) -> None:
        own = dict(self.model.named_parameters())
        for name, value in state.items():
            if name == GENERATOR:
                self.model.stochca.generator.set_state(value)
            elif name not in own or own[name].shape != value.shape:
                raise IncaError(f"the checkpoint does not fit this model ({name})")
            else:
                own[name].copy_(value)


def member_name(ft: FineTuneConfig) -> str:
    return f"lr{ft.lr:g}"


def predict_model(
    model: nn.Module, backbone: Backbone, splits: Splits, config: TrainConfig, split: str
) -> tuple[Tensor, Tensor]:
    """Class probabilities (N, C) and labels (N,) of ``split`` by a fine-tuned ``model``."""
    members = ModelMembers(model, ["model"], backbone.precision)
    probs, labels = predict_all(
        PixelSource(backbone, splits, config, sharded=False),
        members,
        split,
        backbone.device,
        config.progress,
    )
    return probs["model"], labels


def select_vqt_features(
    model: nn.Module, splits: Splits, backbone: Backbone, config: TrainConfig
) -> dict[str, Any]:
    """Group-lasso feature selection and head refit for a trained VQT model (in place)."""
    from inca.methods.vqt.group_lasso import refit_head, select_features

    ft = model.config
    model.eval()
    features, labels = [], []
    for pixels, y in PixelSource(backbone, splits, config, sharded=False).evaluate("train"):
        with torch.no_grad(), backbone.precision.mixed():
            features.append(model.features(pixels.to(backbone.device)).float().cpu())
        labels.append(y)
    features, train_labels = torch.cat(features), torch.cat(labels)
    keep = select_features(
        features, train_labels, len(splits.class_names), ft.lasso_keep, ft.lasso_strength
    )
    model.set_selection(keep)
    head = torch.nn.Linear(len(keep), len(splits.class_names))
    refit_head(features[:, keep], train_labels, head)
    model.head.load_state_dict(head.state_dict())
    probs, val_labels = predict_model(model, backbone, splits, config, "val")
    return {"selected_features": len(keep), "val_acc": accuracy(probs, val_labels)}


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
    if ft.shares_backbone_pass(lrs):
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
    num_classes, method = len(splits.class_names), fts[0].method
    torch.manual_seed(config.seed)
    if len(fts) == 1:
        model = build_model(backbone, num_classes, fts[0]).to(backbone.device)
    else:
        model = VQTSweep(backbone, num_classes, fts, config.seed).to(backbone.device)
    if getattr(model, "stochca", None) is not None:
        model.stochca.seed(config.seed)
    names = [member_name(ft) for ft in fts]
    members = ModelMembers(model, names, backbone.precision)
    signature = {"finetune": _signed(fts), "sizes": splits.sizes()}
    trainer = Trainer(
        members, PixelSource(backbone, splits, config), config, len(splits.train), out_dir,
        signature, backbone.device, num_val=len(splits.val),
    )  # fmt: skip
    print(f"{method}: {len(names)} member(s) ({', '.join(names)}) in {out_dir}")
    trainer.fit(resume=resume)
    trainer.load_best()
    return [
        (part, _record(part, trainer, name, splits, backbone, config))
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
) -> dict[str, Any]:
    """A trained model's record; VQT's optional feature selection happens here."""
    ft, selection = model.config, {}
    score = trainer.best_acc[name]  # the --metric's value at the best epoch
    best_acc = score
    if config.metric != "accuracy" and name in trainer.best_val_probs:
        best_acc = accuracy(trainer.best_val_probs[name], trainer.val_labels)
    if ft.selects_features() and name not in trainer.diverged:
        selection = select_vqt_features(model, splits, backbone, config)
        selection["val_acc_before_selection"] = best_acc
        best_acc = selection.pop("val_acc")  # feature selection judges by accuracy
        score = best_acc if config.metric == "accuracy" else score
        print(f"vqt: kept {selection['selected_features']} features: val {100 * best_acc:.2f}%")
    if name in trainer.diverged:
        selection["diverged_at"] = trainer.diverged[name]
    return {
        **selection,
        "val_acc": best_acc,
        "val_score": score,
        "metric": config.metric,
        "best_epoch": trainer.best_epoch[name],
        "train_time_s": trainer.train_seconds,
        "train_images_per_s": trainer.images_seen / max(trainer.train_seconds, 1e-9),
        "trainable_params": model.trainable_params(),
        "config": ft.to_dict(),
    }
