"""LoRA's config: the rank, scale and dropout of the low-rank adapters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from inca.errors import IncaError
from inca.methods.full.config import CopyConfig


@dataclass(frozen=True)
class LoraConfig(CopyConfig):
    """Low-rank adapters (``peft``) on the attention projections train; the copy stays frozen.
    lora_r: rank; lora_alpha: scale; lora_dropout: on the adapters' input."""

    method: ClassVar[str] = "lora"
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lora_r < 1 or self.lora_alpha <= 0 or not 0 <= self.lora_dropout < 1:
            raise IncaError("LoRA needs lora_r >= 1, lora_alpha > 0 and 0 <= lora_dropout < 1")
