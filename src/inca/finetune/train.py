"""Training a fine-tuning method in the same harness as InCA: same data, splits, seeds, batch
order, augmentation, schedule and selection rules (best validation epoch; test once)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from inca.backbones.base import Backbone
from inca.data import ImageTransform, Splits, Subset, make_loader
from inca.device import native_bf16
from inca.errors import IncaError
from inca.finetune.config import FineTuneConfig
from inca.finetune.model import build_model
from inca.finetune.resume import restore_epoch, save_epoch
from inca.finetune.vqt_sweep import VQTSweep, shares_backbone_pass
from inca.select import accuracy
from inca.train.bank import lr_factor
from inca.train.engine import TrainConfig, epoch_order


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast where the hardware has bf16 (fp32 master weights), fp16 on older GPUs."""
    if native_bf16(device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


@torch.no_grad()
def run_over(
    fn: Callable[[torch.Tensor], torch.Tensor],
    subset: Subset,
    backbone: Backbone,
    config: TrainConfig,
    desc: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``fn`` of every image of ``subset`` (not augmented), float32 on the CPU, and the labels."""
    loader = make_loader(
        subset,
        ImageTransform(backbone.preprocess),
        config.eval_batch_size,
        num_workers=config.workers,
    )
    outputs, labels = [], []
    for pixels, y, _ in tqdm(
        loader,
        desc=desc,
        unit="batch",
        leave=False,
        disable=not config.progress,
        dynamic_ncols=True,
    ):
        with autocast_for(backbone.device):
            outputs.append(fn(pixels.to(backbone.device)).float().cpu())
        labels.append(y)
    return torch.cat(outputs, dim=-2), torch.cat(labels)  # (..., N, C)


def evaluate(
    model: torch.nn.Module, subset: Subset, backbone: Backbone, config: TrainConfig, desc: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities (N, C) and labels (N,) of ``subset``."""
    model.eval()
    logits, labels = run_over(model, subset, backbone, config, desc)
    return logits.softmax(-1), labels


def select_vqt_features(
    model: torch.nn.Module, splits: Splits, backbone: Backbone, config: TrainConfig
) -> dict[str, Any]:
    """Group-lasso feature selection and head refit for a trained VQT model (in place)."""
    from inca.finetune.group_lasso import refit_head, select_features

    ft = model.config
    model.eval()
    features, labels = run_over(model.features, splits.train, backbone, config, "features")
    keep = select_features(
        features, labels, len(splits.class_names), ft.lasso_keep, ft.lasso_strength
    )
    model.set_selection(keep)
    head = torch.nn.Linear(len(keep), len(splits.class_names))
    refit_head(features[:, keep], labels, head)
    model.head.load_state_dict(head.state_dict())
    probs, val_labels = evaluate(model, splits.val, backbone, config, "validate")
    return {"selected_features": len(keep), "val_acc": accuracy(probs, val_labels)}


def fine_tune(
    backbone: Backbone,
    splits: Splits,
    ft: FineTuneConfig,
    config: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
) -> tuple[torch.nn.Module, dict[str, Any]]:
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
) -> list[tuple[torch.nn.Module, dict[str, Any]]]:
    """``ft`` at each of ``lrs``: (model, record) per rate, in order. Runs that can share the
    frozen backbone's pass (VQT) train together in ``out_dir/lr<a>+<b>...``; the others run
    one after another in ``out_dir/lr<rate>``."""
    out_dir, configs = Path(out_dir), [dataclasses.replace(ft, lr=lr) for lr in lrs]
    if shares_backbone_pass(ft, lrs):
        name = "lr" + "+".join(f"{lr:g}" for lr in lrs)
        return _train(backbone, splits, configs, config, out_dir / name, resume)
    return [
        _train(backbone, splits, [c], config, out_dir / f"lr{c.lr:g}", resume)[0] for c in configs
    ]


def _merged(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Members' states as one flat dict for the checkpoint (a single model's stays as it is)."""
    if len(states) == 1:
        return states[0]
    return {f"{g}.{k}": v for g, state in enumerate(states) for k, v in state.items()}


def _split(state: dict[str, torch.Tensor], members: int) -> list[dict[str, torch.Tensor]]:
    if members == 1:
        return [state]
    out: list[dict[str, torch.Tensor]] = [{} for _ in range(members)]
    for key, value in state.items():
        g, name = key.split(".", 1)
        out[int(g)][name] = value
    return out


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]  # checkpoints before sweeps: one value


def _train(
    backbone: Backbone,
    splits: Splits,
    fts: list[FineTuneConfig],
    config: TrainConfig,
    out_dir: Path,
    resume: bool,
) -> list[tuple[torch.nn.Module, dict[str, Any]]]:
    """Train one model, or (several configs) a one-pass sweep whose members each keep their own
    best validation epoch; the loss is the sum of the members' losses."""
    out_dir.mkdir(parents=True, exist_ok=True)
    device, num_classes, method = backbone.device, len(splits.class_names), fts[0].method
    torch.manual_seed(config.seed)
    if len(fts) == 1:
        model = build_model(backbone, num_classes, fts[0]).to(device)
        members = [model]
    else:
        model = VQTSweep(backbone, num_classes, fts, config.seed).to(device)
        members = list(model.members)
    if getattr(model, "stochca", None) is not None:
        model.stochca.seed(config.seed)
    optimizer = torch.optim.AdamW(model.param_groups(), fused=True)
    subset = splits.train
    steps = len(subset) // config.batch_size
    if steps == 0:
        raise IncaError(
            f"the training split has {len(subset)} images, fewer than one batch of "
            f"{config.batch_size}; lower the batch size"
        )
    total, warmup = steps * config.epochs, int(config.warmup * steps * config.epochs)
    best_acc, best_epoch = [-1.0] * len(members), [0] * len(members)
    best_state = [m.changed_state() for m in members]
    step, seen, train_seconds, first_epoch = 0, 0, 0.0, 0
    signature = {"finetune": _signed(fts), "train": config.signature(), "sizes": splits.sizes()}
    restored = restore_epoch(out_dir, model, optimizer, signature) if resume else None
    if restored is not None:
        meta, saved_best = restored
        first_epoch, step, seen = meta["epoch"], meta["step"], meta["seen"]
        best_acc, best_epoch = _as_list(meta["best_acc"]), _as_list(meta["best_epoch"])
        best_state, train_seconds = _split(saved_best, len(members)), meta["seconds"]
        print(f"{method}: resuming after epoch {first_epoch}/{config.epochs} in {out_dir}")
    else:
        (out_dir / "log.jsonl").unlink(missing_ok=True)
    for epoch in range(first_epoch, config.epochs):
        model.train()
        order = epoch_order(len(subset), config.seed, epoch)[: steps * config.batch_size]
        transform = ImageTransform(
            backbone.preprocess, augment=config.augment, allow_hflip=subset.dataset.allow_hflip
        )
        loader = make_loader(
            Subset(subset.dataset, subset.indices[order.numpy()]),
            transform,
            config.batch_size,
            seed=config.seed * 1000 + epoch,
            num_workers=config.workers,
        )
        start = time.perf_counter()
        bar = tqdm(
            loader,
            desc=f"{method} epoch {epoch + 1}/{config.epochs}",
            unit="batch",
            disable=not config.progress,
            dynamic_ncols=True,
        )
        for pixels, labels, _ in bar:
            with autocast_for(device):
                logits = model(pixels.to(device))  # (B, C), or (G, B, C) for a sweep
            labels = labels.to(device)
            loss = sum(  # members' parameters are disjoint: each gets its own run's gradient
                F.cross_entropy(lg.float(), labels, label_smoothing=config.label_smoothing)
                for lg in logits.reshape(len(members), len(labels), -1)
            )
            factor = lr_factor(step, total, warmup)
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step, seen = step + 1, seen + len(labels)
            bar.set_postfix_str(
                f"loss {loss.item() / len(members):.3f}, "
                f"{seen / (train_seconds + time.perf_counter() - start):.1f} img/s"
            )
        train_seconds += time.perf_counter() - start
        probs, labels = evaluate(model, splits.val, backbone, config, "validate")
        accs = [accuracy(p, labels) for p in probs.reshape(len(members), len(labels), -1)]
        for g, acc in enumerate(accs):
            if acc > best_acc[g]:
                best_acc[g], best_epoch[g] = acc, epoch + 1
                best_state[g] = members[g].changed_state()
        # cumulative training seconds at this validation: the method's accuracy-vs-cost curve
        entry = {"epoch": epoch + 1, "step": step, "seconds": train_seconds}
        entry |= {"val_acc": accs[0]} if len(members) == 1 else {"val_acc_by_lr": _by_lr(fts, accs)}
        with open(out_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")
        meta = {"epoch": epoch + 1, "step": step, "seen": seen, "best_acc": best_acc}
        meta |= {"best_epoch": best_epoch, "seconds": train_seconds, "signature": signature}
        save_epoch(out_dir, model, optimizer, _merged(best_state), meta)
        shown = ", ".join(
            f"{_lr_label(ft, len(fts))}{100 * a:.2f}% (best {100 * b:.2f}%)"
            for ft, a, b in zip(fts, accs, best_acc, strict=True)
        )
        print(f"{method} epoch {epoch + 1}/{config.epochs}: val {shown}")
    trained = []
    for g, member in enumerate(members):
        member.load_changed_state(best_state[g])
        trained.append((member, _record(member, best_acc[g], best_epoch[g], splits, backbone,
                                        config, train_seconds, seen)))  # fmt: skip
    return trained


def _signed(fts: list[FineTuneConfig]) -> Any:
    """The options a checkpoint is signed with (a list for a sweep)."""
    return fts[0].to_dict() if len(fts) == 1 else [ft.to_dict() for ft in fts]


def _by_lr(fts: list[FineTuneConfig], accs: list[float]) -> dict[str, float]:
    return {f"{ft.lr:g}": acc for ft, acc in zip(fts, accs, strict=True)}


def _lr_label(ft: FineTuneConfig, members: int) -> str:
    return "" if members == 1 else f"lr {ft.lr:g} "


def _record(
    model: torch.nn.Module,
    best_acc: float,
    best_epoch: int,
    splits: Splits,
    backbone: Backbone,
    config: TrainConfig,
    train_seconds: float,
    seen: int,
) -> dict[str, Any]:
    """A trained model's record; VQT's optional feature selection happens here."""
    ft, selection = model.config, {}
    if ft.method == "vqt" and ft.lasso_keep < 1:
        selection = select_vqt_features(model, splits, backbone, config)
        selection["val_acc_before_selection"] = best_acc
        best_acc = selection.pop("val_acc")
        print(f"vqt: kept {selection['selected_features']} features: val {100 * best_acc:.2f}%")
    return {
        **selection,
        "val_acc": best_acc,
        "best_epoch": best_epoch,
        "train_time_s": train_seconds,
        "train_images_per_s": seen / max(train_seconds, 1e-9),
        "trainable_params": model.trainable_params(),
        "config": ft.to_dict(),
    }
