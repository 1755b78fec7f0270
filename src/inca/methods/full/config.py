"""Full fine-tuning's config, and the fields every method training a copy of the backbone has."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from inca.errors import IncaError
from inca.methods.pixel_config import FineTuneConfig


@dataclass(frozen=True)
class CopyConfig(FineTuneConfig):
    """What every method training a copy of the backbone has (full, partial, LoRA, StochCA).
    layer_decay: block i of L gets lr·decay^(L-i) (1: none); grad_checkpointing: recompute
    block activations in the backward instead of storing them (less memory, ~30% more time)."""

    layer_decay: float = 1.0
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.layer_decay <= 1:
            raise IncaError(f"layer_decay must be in (0, 1], got {self.layer_decay}")


@dataclass(frozen=True)
class FullConfig(CopyConfig):
    """Every weight of the copy trains."""

    method: ClassVar[str] = "full"
