"""Epoch checkpoints for the methods trained through the backbone, so a long run resumes.

A fine-tuning run of DINOv2-S takes half an hour per learning rate on a 2-core CPU; an
interrupted one must not start over. After every epoch the run's state goes into ONE safetensors
file, replaced atomically (the same format as the adapter engine's, ``inca.train.checkpoint``):
the trainable parameters, the best epoch's saved state, the AdamW moments, and in the metadata
the counters, the best accuracy, StochCA's draw generator and the run's signature (method options,
budget, data sizes). Resuming with other options is refused rather than mixed. Because batch
order and augmentation are functions of (seed, epoch), a resumed run ends exactly where an
uninterrupted one would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from inca.errors import IncaError
from inca.train import checkpoint as ckpt


def save_epoch(
    out_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    best_state: dict[str, torch.Tensor],
    meta: dict[str, Any],
) -> None:
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    opt_tensors, groups = ckpt.optimizer_to_tensors(optimizer)
    tensors = ckpt.flatten("params", trainable) | ckpt.flatten("best", best_state) | opt_tensors
    stochca = getattr(model, "stochca", None)
    if stochca is not None:
        tensors["stochca/generator"] = stochca.generator.get_state()
    ckpt.save(out_dir, tensors, meta | {"optimizer_groups": groups})


def restore_epoch(
    out_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, signature: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """Load the last epoch's state into ``model`` and ``optimizer``; returns (meta, best state),
    or None when ``out_dir`` holds no checkpoint."""
    if not (Path(out_dir) / ckpt.FILE).exists():
        return None
    tensors, meta = ckpt.load(out_dir)
    if meta.get("signature") != signature:
        raise IncaError(
            f"{out_dir} holds a checkpoint of a run with other options; use the same options, "
            "another output folder, or delete the folder to start again"
        )
    params = ckpt.unflatten(tensors, "params")
    own = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in params.items():
            if name not in own or own[name].shape != value.shape:
                raise IncaError(f"checkpoint in {out_dir} does not fit this model ({name})")
            own[name].copy_(value)
    ckpt.optimizer_from_tensors(optimizer, tensors, meta["optimizer_groups"])
    stochca = getattr(model, "stochca", None)
    if stochca is not None and "stochca/generator" in tensors:
        stochca.generator.set_state(tensors["stochca/generator"])
    return meta, ckpt.unflatten(tensors, "best")
