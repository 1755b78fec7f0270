"""Training a fine-tuning method in the same harness as InCA: same data, splits, seeds, batch
order, augmentation, schedule and selection rules (best validation epoch; test once)."""

from __future__ import annotations

import contextlib
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
    return torch.cat(outputs), torch.cat(labels)


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
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = backbone.device
    torch.manual_seed(config.seed)
    model = build_model(backbone, len(splits.class_names), ft).to(device)
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
    best_acc, best_epoch, best_state, step, seen = -1.0, 0, model.changed_state(), 0, 0
    train_seconds, first_epoch = 0.0, 0
    signature = {"finetune": ft.to_dict(), "train": config.signature(), "sizes": splits.sizes()}
    restored = restore_epoch(out_dir, model, optimizer, signature) if resume else None
    if restored is not None:
        meta, best_state = restored
        first_epoch, step, seen = meta["epoch"], meta["step"], meta["seen"]
        best_acc, best_epoch, train_seconds = meta["best_acc"], meta["best_epoch"], meta["seconds"]
        print(f"{ft.method}: resuming after epoch {first_epoch}/{config.epochs} in {out_dir}")
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
            desc=f"{ft.method} epoch {epoch + 1}/{config.epochs}",
            unit="batch",
            disable=not config.progress,
            dynamic_ncols=True,
        )
        for pixels, labels, _ in bar:
            with autocast_for(device):
                logits = model(pixels.to(device))
            loss = F.cross_entropy(
                logits.float(), labels.to(device), label_smoothing=config.label_smoothing
            )
            factor = lr_factor(step, total, warmup)
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step, seen = step + 1, seen + len(labels)
            bar.set_postfix_str(
                f"loss {loss.item():.3f}, "
                f"{seen / (train_seconds + time.perf_counter() - start):.1f} img/s"
            )
        train_seconds += time.perf_counter() - start
        probs, labels = evaluate(model, splits.val, backbone, config, "validate")
        acc = accuracy(probs, labels)
        if acc > best_acc:
            best_acc, best_epoch, best_state = acc, epoch + 1, model.changed_state()
        with open(out_dir / "log.jsonl", "a") as f:
            f.write(json.dumps({"epoch": epoch + 1, "val_acc": acc, "step": step}) + "\n")
        meta = {"epoch": epoch + 1, "step": step, "seen": seen, "best_acc": best_acc}
        meta |= {"best_epoch": best_epoch, "seconds": train_seconds, "signature": signature}
        save_epoch(out_dir, model, optimizer, best_state, meta)
        print(
            f"{ft.method} epoch {epoch + 1}/{config.epochs}: val {100 * acc:.2f}% "
            f"(best {100 * best_acc:.2f}%)"
        )
    model.load_changed_state(best_state)
    selection = {}
    if ft.method == "vqt" and ft.lasso_keep < 1:
        selection = select_vqt_features(model, splits, backbone, config)
        selection["val_acc_before_selection"] = best_acc
        best_acc = selection.pop("val_acc")
        print(f"vqt: kept {selection['selected_features']} features: val {100 * best_acc:.2f}%")
    record = {
        **selection,
        "val_acc": best_acc,
        "best_epoch": best_epoch,
        "train_time_s": train_seconds,
        "train_images_per_s": seen / max(train_seconds, 1e-9),
        "trainable_params": model.trainable_params(),
        "config": ft.to_dict(),
    }
    return model, record
