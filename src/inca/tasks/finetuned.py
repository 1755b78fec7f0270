"""A fine-tuned task: a new head plus the backbone weights fine-tuning changed.

Unlike adapter tasks it changes the backbone, so it cannot share a frozen backbone pass:
:class:`~inca.tasks.MultiTask` runs it on its own (and says so). It stores only the changed
weights (all of them for full fine-tuning, the last k blocks for partial, the LoRA matrices for
LoRA) and rebuilds its model on the frozen backbone it was trained from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from inca.backbones.base import Backbone
from inca.finetune.config import FineTuneConfig


class FineTunedTask(nn.Module):
    changes_backbone = True
    taps: list[str] = []  # reads no frozen taps: it runs its own model
    member_taps: dict[str, str] = {}

    def __init__(
        self,
        name: str,
        method: str,
        backbone_info: Mapping[str, Any],
        class_names: Sequence[str],
        config: FineTuneConfig,
        state: dict[str, Tensor],
        metrics: Mapping | None = None,
        data: Mapping | None = None,
        created: str | None = None,
    ) -> None:
        super().__init__()
        from inca.tasks.task import now_iso

        self.name, self.method, self.config = name, method, config
        self.backbone_info = dict(backbone_info)
        self.class_names = list(class_names)
        self.state = {k: v.detach().cpu() for k, v in state.items()}
        self.metrics, self.data = dict(metrics or {}), dict(data or {})
        self.created = created or now_iso()
        self._model: nn.Module | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def build(self, backbone: Backbone) -> nn.Module:
        """Its model on ``backbone`` (the frozen one it was trained from), built once."""
        if self._model is None:
            from inca.finetune.model import FineTuneModel

            model = FineTuneModel(backbone, self.num_classes, self.config)
            model.load_changed_state(self.state)
            self._model = model.to(backbone.device).eval()
        return self._model

    def save(self, path) -> Any:
        """Write the task directory ``path`` atomically (see ``inca.tasks.storage``)."""
        from inca.tasks.storage import save_task

        return save_task(self, path)

    @torch.inference_mode()
    def predict_pixels(self, pixels: Tensor, backbone: Backbone) -> Tensor:
        """pixels (B, 3, S, S) -> probabilities (B, C), through its own pass."""
        model = self.build(backbone)
        with backbone.precision.autocast() if backbone.precision.autocast_dtype else _amp(backbone):
            logits = model(pixels.to(backbone.device, torch.float32))
        return logits.float().softmax(-1)


def _amp(backbone: Backbone):
    """Fine-tuned weights are fp32: run them under bf16 autocast where the backbone used bf16."""
    if backbone.precision.weight_dtype == torch.bfloat16:
        return torch.autocast(backbone.device.type, dtype=torch.bfloat16)
    import contextlib

    return contextlib.nullcontext()
