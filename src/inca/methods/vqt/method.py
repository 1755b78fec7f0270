"""VQT's behaviour: its model on the frozen backbone, a learning-rate sweep that trains from one
backbone pass, and the optional group-lasso feature selection after training."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor, nn

from inca.methods.pixel_method import PixelMethod
from inca.methods.vqt.group_lasso import select_and_refit
from inca.methods.vqt.model import VQTModel
from inca.methods.vqt.sweep import VQTSweep, shares_pass


class VQTMethod(PixelMethod):
    def build(self, backbone: Any, num_classes: int, config: Any) -> nn.Module:
        return VQTModel(backbone, num_classes, config)

    def shares_pass(self, config: Any, lrs: list[float]) -> bool:
        return shares_pass(config, lrs)

    def build_sweep(
        self, backbone: Any, num_classes: int, configs: list[Any], seed: int
    ) -> nn.Module:
        return VQTSweep(backbone, num_classes, configs, seed)

    def refit(
        self, model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], num_classes: int
    ) -> dict[str, Any]:
        """lasso_keep < 1: keep that fraction of the head's input features, refit the head."""
        if model.config.lasso_keep >= 1:
            return {}
        return {"selected_features": select_and_refit(model, batches, num_classes)}
