"""A task trained through the backbone: a new head plus what the method changed or added.

Unlike adapter tasks it cannot share a plain frozen backbone pass: fine-tuned tasks change the
backbone's weights, and VQT's queries must be read inside every block. :class:`MultiTask` runs
it on its own (and says why). It stores only what the method changed or added (all weights for
full fine-tuning and StochCA, the last k blocks for partial, the LoRA matrices for LoRA, the
query tokens for VQT) and rebuilds its model on the frozen backbone it was trained from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from inca.backbones.base import Backbone
from inca.errors import IncaError
from inca.methods.pixel_config import FineTuneConfig, config_from_dict
from inca.tasks.storage import TASK_JSON, TaskKind, register_task_kind, require, save_task
from inca.utils.io import now_iso


class FineTunedTask(nn.Module):
    own_pass = True  # MultiTask runs it on its own pass
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
        self.name, self.method, self.config = name, method, config
        self.backbone_info = dict(backbone_info)
        self.class_names = list(class_names)
        self.state = {k: v.detach().cpu() for k, v in state.items()}
        self.metrics, self.data = dict(metrics or {}), dict(data or {})
        self.created = created or now_iso()
        self._model: nn.Module | None = None

    @property
    def changes_backbone(self) -> bool:
        """VQT reads the frozen backbone (with queries inside); the others change its weights."""
        return self.config.changes_backbone

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def build(self, backbone: Backbone) -> nn.Module:
        """Its model on ``backbone`` (the frozen one it was trained from), built once."""
        if self._model is None:
            from inca.methods.pixel_config import build_model

            model = build_model(backbone, self.num_classes, self.config)
            model.load_changed_state(self.state)
            self._model = model.to(backbone.device).eval()
        return self._model

    def save(self, path) -> Any:
        """Write the task directory ``path`` atomically (see ``inca.tasks.storage``)."""
        return save_task(self, path)

    @torch.inference_mode()
    def predict_pixels(self, pixels: Tensor, backbone: Backbone) -> Tensor:
        """pixels (B, 3, S, S) -> probabilities (B, C), through its own pass."""
        model = self.build(backbone)
        with backbone.precision.mixed():  # as it trained: fp32 weights, the precision's compute
            logits = model(pixels.to(backbone.device, torch.float32))
        return logits.float().softmax(-1)


# ------------------------------------------------------------------ how it is stored
def _check(record: dict[str, Any], file: Path) -> None:
    require(record, file, "", finetune=dict)


def _read(record: dict[str, Any], tensors: dict[str, Tensor], path: Path) -> FineTunedTask:
    file, bb = path / TASK_JSON, record["backbone"]
    try:
        config = config_from_dict(record["finetune"])
    except TypeError as e:
        raise IncaError(f"{file}: field finetune is not a fine-tuning config ({e})") from None
    return FineTunedTask(
        record["name"],
        record["method"],
        bb,
        record["class_names"],
        config,
        tensors,
        metrics=record.get("metrics"),
        data=record.get("data"),
        created=record.get("created"),
    )


register_task_kind(
    FineTunedTask,
    TaskKind(
        "finetune",
        lambda task: {"finetune": task.config.to_dict()},
        lambda task: dict(task.state),
        _check,
        _read,
    ),
)
