"""Full fine-tuning's behaviour, the base of every method that trains a copy of the backbone:
which weights of the copy train, what differs from the frozen backbone, and what a training
step adds (StochCA's routes). Partial, LoRA and StochCA override what they do differently."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from inca.backbones.attention_routing import KVRoute
from inca.errors import IncaError
from inca.methods.full.model import FineTuneModel
from inca.methods.pixel_method import PixelMethod


class CopyMethod(PixelMethod):
    """Every weight of the fp32 copy trains; its task stores them all."""

    def build(self, backbone: Any, num_classes: int, config: Any) -> nn.Module:
        return FineTuneModel(backbone, num_classes, config)

    def prepare(self, config: Any, copy: nn.Module, backbone: Any) -> nn.Module:
        """Set which weights of the fp32 ``copy`` train (and wrap it where the method does);
        returns the model to train."""
        return copy.requires_grad_(True)

    def base(self, model: nn.Module) -> nn.Module:
        """The transformer inside what :meth:`prepare` returned."""
        return model

    def attach(self, owner: nn.Module, backbone: Any, copy: nn.Module) -> None:
        """Give the ``FineTuneModel`` ``owner`` what the method adds beside its copy."""

    def routes(self, owner: nn.Module, pixels: Tensor) -> dict[nn.Module, KVRoute]:
        """Attention routes for this forward of ``owner`` (none: plain self-attention)."""
        return {}

    def body_state(self, model: nn.Module) -> dict[str, Tensor]:
        """The body's weights that differ from the frozen backbone."""
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        return {f"model.{k}": v for k, v in model.state_dict().items() if k in trainable}

    def load_body_state(self, model: nn.Module, state: dict[str, Tensor]) -> None:
        body = {k[6:]: v for k, v in state.items() if k.startswith("model.")}
        own = model.state_dict()
        unknown = [k for k in body if k not in own]
        if unknown:
            raise IncaError(f"fine-tuned weights do not fit this backbone: {unknown[:3]}")
        for k, v in body.items():
            own[k].copy_(v)
