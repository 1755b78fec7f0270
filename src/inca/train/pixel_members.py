"""A model trained from pixels as the ``Trainer``'s members (one fine-tuned model, or a VQT sweep
of one member per learning rate), and a trained model's predictions on a split."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from inca.backbones.base import Backbone
from inca.data import Splits
from inca.errors import IncaError
from inca.methods.pixel_method import pixel_method
from inca.train.batch_sources import PixelSource
from inca.train.config import TrainConfig
from inca.train.split_predictions import predict_all
from inca.utils.device import Precision


class ModelMembers(nn.Module):
    """A fine-tuning model as the trainer's members: ``model`` is one member (``names`` has one
    name) or a VQT sweep, ``model.members[g]`` being member ``names[g]``. Its weights stay fp32;
    it computes under ``precision.mixed()``, the autocast the user's precision asks for. What
    a checkpoint keeps beside the trainable weights (StochCA's draws), its method says."""

    class_weights: Tensor | None = None  # the Members protocol: plain cross-entropy

    def __init__(self, model: nn.Module, names: list[str], precision: Precision) -> None:
        super().__init__()
        self.model, self._names, self.precision = model, list(names), precision
        self.parts = [model] if len(names) == 1 else list(model.members)
        self.behaviour = pixel_method(self.parts[0].config)

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
        return state | self.behaviour.extra_state(self.model)

    @torch.no_grad()
    def load_checkpoint_state(self, state: dict[str, Tensor]) -> None:
        own, extra = dict(self.model.named_parameters()), {}
        for name, value in state.items():
            if name not in own:
                extra[name] = value
            elif own[name].shape != value.shape:
                raise IncaError(f"the checkpoint does not fit this model ({name})")
            else:
                own[name].copy_(value)
        self.behaviour.load_extra_state(self.model, extra)


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
