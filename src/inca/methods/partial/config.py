"""Partial fine-tuning's config: how many of the last blocks of the copy train."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from inca.errors import IncaError
from inca.methods.full.config import CopyConfig


@dataclass(frozen=True)
class PartialConfig(CopyConfig):
    """Only the last ``blocks`` blocks (and the final norm) train."""

    method: ClassVar[str] = "partial"
    blocks: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.blocks < 1:
            raise IncaError(f"partial fine-tuning needs blocks >= 1, got {self.blocks}")
