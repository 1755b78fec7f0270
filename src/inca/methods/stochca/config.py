"""StochCA's config: how often a block attends to the frozen model's keys and values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from inca.errors import IncaError
from inca.methods.full.config import CopyConfig


@dataclass(frozen=True)
class StochCAConfig(CopyConfig):
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
