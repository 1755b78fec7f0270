"""Hugging Face `transformers` vision transformers as backbones (ViT, DeiT, DINOv2, CLIP, ...).

Taps: ``embed`` (the token sequence entering the first block), ``block.i`` (the output of block
i), ``final`` (the backbone's final LayerNorm over all tokens: ``last_hidden_state`` for ViT,
DeiT and DINOv2; for CLIP, whose post-layernorm Hugging Face applies to the pooled token only,
the same norm applied to every token).

The blocks, the embedding and the final norm are found by structure, not by class name, so the
families transformers keeps reorganising (v5 moved ViT's blocks from ``encoder.layer`` to
``layers``) keep working.
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from inca.backbones.base import Backbone
from inca.backbones.preprocess_spec import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from inca.errors import IncaError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# model_type -> (mean, std, default image size or None for the config's own)
FAMILY_DEFAULTS: dict[str, tuple[tuple, tuple, int | None]] = {
    "vit": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), None),
    "deit": (IMAGENET_MEAN, IMAGENET_STD, None),
    "dinov2": (IMAGENET_MEAN, IMAGENET_STD, 224),  # config says 518 (pos-emb grid); eval at 224
    "dinov2_with_registers": (IMAGENET_MEAN, IMAGENET_STD, 224),
    "clip_vision_model": (CLIP_MEAN, CLIP_STD, None),
    "siglip_vision_model": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), None),
}
EMBED_NAMES = ("pre_layrnorm", "pre_layernorm", "embeddings")  # first match is the "embed" tap
FINAL_NORM_NAMES = ("layernorm", "post_layernorm", "norm", "final_layernorm")


def load_hf_model(path_or_id: str) -> nn.Module:
    """A transformers model from a local folder, or a hub id (which needs the network)."""
    from transformers import AutoModel

    local = os.path.isdir(path_or_id)
    try:
        return AutoModel.from_pretrained(path_or_id, local_files_only=local)
    except (OSError, ValueError) as e:
        where = "folder" if local else "hub id"
        raise IncaError(
            f"could not load the Hugging Face model {where} {path_or_id!r}: {e}. Without "
            "network access, save the model with `save_pretrained(DIR)` elsewhere and pass DIR"
        ) from e


def vision_tower(model: nn.Module) -> nn.Module:
    """The image encoder inside a wrapper (CLIPModel, *ForImageClassification)."""
    if hasattr(model, "vision_model"):
        return model.vision_model
    base = getattr(model, "base_model", model)
    return base if isinstance(base, nn.Module) else model


def _blocks_path(model: nn.Module, depth: int) -> str:
    """The ModuleList holding the transformer blocks: the shallowest one of the right length."""
    lists = [
        n for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == depth
    ]
    if not lists:
        raise IncaError(
            f"{type(model).__name__}: no list of {depth} blocks found; use the "
            "generic path: inca.load_backbone(module, taps=[...module patterns...])"
        )
    return min(lists, key=lambda n: n.count("."))


def _first_child(model: nn.Module, names: tuple[str, ...]) -> str | None:
    children = dict(model.named_modules())
    for name in names:
        if name in children and name:
            return name
    return None


def _preprocess_from_folder(path: str | None) -> dict[str, Any]:
    """mean/std/size from a saved ``preprocessor_config.json``, when there is one."""
    if not path or not os.path.isfile(os.path.join(path, "preprocessor_config.json")):
        return {}
    cfg = json.loads(Path(path, "preprocessor_config.json").read_text())
    out: dict[str, Any] = {}
    if "image_mean" in cfg and "image_std" in cfg:
        out["mean"], out["std"] = tuple(cfg["image_mean"]), tuple(cfg["image_std"])
    size = cfg.get("crop_size") or cfg.get("size")
    if isinstance(size, dict):
        size = size.get("height") or size.get("shortest_edge")
    if isinstance(size, int):
        out["image_size"] = size
    return out


def hf_backbone(
    model: nn.Module | str,
    name: str | None = None,
    image_size: int | None = None,
    device: str | torch.device | None = None,
    precision: str | None = "auto",
    weights_hash: str | None = None,
    **preprocess_options: Any,
) -> Backbone:
    """Wrap a transformers vision transformer (instance, local folder or hub id) as a Backbone."""
    folder = model if isinstance(model, str) and os.path.isdir(model) else None
    if isinstance(model, str):
        name = name or model
        model = load_hf_model(model)
    tower = vision_tower(model)
    cfg = tower.config
    for attr in ("num_hidden_layers", "hidden_size", "patch_size", "image_size"):
        if not hasattr(cfg, attr):
            raise IncaError(
                f"{type(tower).__name__} is not a vision transformer inca knows "
                f"(its config lacks {attr}); use the generic hook path instead"
            )
    depth, mtype = cfg.num_hidden_layers, getattr(cfg, "model_type", "")
    mean, std, default_size = FAMILY_DEFAULTS.get(mtype, (IMAGENET_MEAN, IMAGENET_STD, None))
    saved = _preprocess_from_folder(folder)
    size = image_size or saved.get("image_size") or default_size or cfg.image_size
    options = {"mean": saved.get("mean", mean), "std": saved.get("std", std)} | preprocess_options
    preprocess = Preprocess(image_size=int(size), patch_size=cfg.patch_size, **options)

    blocks = _blocks_path(tower, depth)
    embed = _first_child(tower, EMBED_NAMES)
    norm = _first_child(tower, FINAL_NORM_NAMES)
    if embed is None or norm is None:
        raise IncaError(
            f"{type(tower).__name__}: embeddings or final norm not found; use the generic hook path"
        )
    tap_modules = {"embed": embed} | {f"block.{i}": f"{blocks}.{i}" for i in range(depth)}
    norm_module = tower.get_submodule(norm)
    derived = {"final": (f"block.{depth - 1}", norm_module)}

    kwargs: dict[str, Any] = {}
    if "interpolate_pos_encoding" in inspect.signature(tower.forward).parameters:
        kwargs["interpolate_pos_encoding"] = size != cfg.image_size
    backbone = Backbone(
        tower,
        name=name or mtype or type(tower).__name__,
        preprocess=preprocess,
        tap_modules=tap_modules,
        derived=derived,
        run=lambda m, x: m(pixel_values=x, **kwargs),
        device=device,
        precision=precision,
        family=f"hf-{mtype}" if mtype else "hf",
        weights_hash=weights_hash,
        num_prefix_tokens=1 + (mtype == "deit") + getattr(cfg, "num_register_tokens", 0),
    )
    # what fine-tuning methods need to run a trainable copy of the tower
    backbone.block_paths = [tap_modules[f"block.{i}"] for i in range(depth)]
    backbone.final_norm_path = norm
    backbone.output_is_final = norm != "post_layernorm"  # CLIP norms only its pooled token
    return backbone
