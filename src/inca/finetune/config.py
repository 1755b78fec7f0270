"""Fine-tuning methods compared against InCA: full, partial (last k blocks) and LoRA.

Each trains a copy of the backbone (all of it, its last k blocks, or LoRA matrices on its
attention projections through Hugging Face ``peft``) plus a new linear head on [CLS, mean of the
patch tokens] of the final normed tokens: the same features the linear probe reads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from inca.errors import IncaError

METHODS = ("full", "partial", "lora")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "query", "key", "value")


@dataclass(frozen=True)
class FineTuneConfig:
    """method: full | partial | lora. lr: backbone learning rate; head_lr: the new head's.
    layer_decay: layer-wise lr decay (block i of L gets lr·decay^(L-i); 1 = none).
    blocks: how many last blocks "partial" trains. lora_r / lora_alpha / lora_dropout: LoRA rank,
    scale and dropout on the attention projections. grad_checkpointing: recompute block
    activations in the backward instead of storing them (less memory, ~30% more time)."""

    method: str = "full"
    lr: float = 5e-5
    head_lr: float = 1e-3
    weight_decay: float = 0.05
    layer_decay: float = 1.0
    blocks: int = 2
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise IncaError(f"unknown fine-tuning method {self.method!r}; valid: {METHODS}")
        if self.lr <= 0 or self.head_lr <= 0:
            raise IncaError("learning rates must be positive")
        if not 0 < self.layer_decay <= 1:
            raise IncaError(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        if self.blocks < 1:
            raise IncaError(f"partial fine-tuning needs blocks >= 1, got {self.blocks}")
        if self.lora_r < 1 or self.lora_alpha <= 0 or not 0 <= self.lora_dropout < 1:
            raise IncaError("LoRA needs lora_r >= 1, lora_alpha > 0 and 0 <= lora_dropout < 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
