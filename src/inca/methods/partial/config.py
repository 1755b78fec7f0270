"""Partial fine-tuning: the last blocks (and the final norm) of a copy of the backbone train."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from inca.errors import IncaError
from inca.methods.full.config import FullConfig


@dataclass(frozen=True)
class PartialConfig(FullConfig):
    """Only the last ``blocks`` blocks (and the final norm) train."""

    method: ClassVar[str] = "partial"
    blocks: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.blocks < 1:
            raise IncaError(f"partial fine-tuning needs blocks >= 1, got {self.blocks}")

    def prepare(self, model: nn.Module, backbone: Any) -> nn.Module:
        model.requires_grad_(False)
        for path in backbone.block_paths[-self.blocks :] + [backbone.final_norm_path]:
            model.get_submodule(path).requires_grad_(True)
        return model
