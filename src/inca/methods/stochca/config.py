"""StochCA: full fine-tuning whose blocks, at random, attend to the frozen model's keys and
values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from inca.errors import IncaError
from inca.methods.full.config import FullConfig


@dataclass(frozen=True)
class StochCAConfig(FullConfig):
    """Full fine-tuning where, with probability stochca_p (one draw per block per step, or per
    sample with stochca_per_sample), a block's self-attention attends to the frozen model's
    keys and values instead."""

    method: ClassVar[str] = "stochca"
    stochca_p: float = 0.1
    stochca_per_sample: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.grad_checkpointing:
            raise IncaError(
                "StochCA cannot use grad_checkpointing: the recomputed blocks would attend to "
                "their own keys/values instead of the frozen ones; drop grad_checkpointing"
            )
        if not 0 <= self.stochca_p <= 1:
            raise IncaError(f"stochca_p is a probability, got {self.stochca_p}")

    def cross_attention(self, backbone: Any, model: nn.Module) -> Any:
        from inca.methods.stochca.cross_attention import StochasticCrossAttention

        return StochasticCrossAttention(backbone, model, self.stochca_p, self.stochca_per_sample)
