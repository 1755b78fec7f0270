"""Full fine-tuning: every weight of a copy of the backbone trains, with a new head."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from inca.errors import IncaError
from inca.methods.pixel_config import FineTuneConfig


@dataclass(frozen=True)
class FullConfig(FineTuneConfig):
    """Every weight of the copy trains. layer_decay: block i of L gets lr·decay^(L-i) (1:
    none); grad_checkpointing: recompute block activations in the backward instead of storing
    them (less memory, ~30% more time)."""

    method: ClassVar[str] = "full"
    layer_decay: float = 1.0
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.layer_decay <= 1:
            raise IncaError(f"layer_decay must be in (0, 1], got {self.layer_decay}")

    def prepare(self, model: nn.Module, backbone: Any) -> nn.Module:
        """Set which weights of the fp32 copy ``model`` train (and wrap it where the method
        does); returns the model to train."""
        return model.requires_grad_(True)

    def base(self, model: nn.Module) -> nn.Module:
        """The transformer inside what ``prepare`` returned."""
        return model

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

    def cross_attention(self, backbone: Any, model: nn.Module) -> Any:
        """StochCA's draws of blocks that attend to the frozen keys and values (None: none)."""
        return None
