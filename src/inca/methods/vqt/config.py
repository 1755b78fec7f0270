"""VQT: learned query tokens summarise every block of the frozen backbone; a head reads them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from inca.errors import IncaError
from inca.methods.pixel_config import FineTuneConfig

_PAIR = re.compile(r"^\s*(-?\d+)\s*:\s*(\d+)\s*$")  # "11:4"


@dataclass(frozen=True)
class VQTConfig(FineTuneConfig):
    """Query tokens per block of the frozen backbone and a head on them. queries: tokens per
    block; layer_queries: per-block overrides "BLOCK:COUNT,..." (e.g. "0:0,11:4"); vqt_naive:
    the append-and-mask reference path that keeps the whole graph (for measuring; same
    numbers); lasso_keep < 1 selects that fraction of the head's input features by group lasso
    (strength lasso_strength), then refits the head on them."""

    method: ClassVar[str] = "vqt"
    changes_backbone: ClassVar[bool] = False  # it reads the frozen backbone (queries inside)
    queries: int = 1
    layer_queries: str = ""
    vqt_naive: bool = False
    lasso_keep: float = 1.0
    lasso_strength: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.queries < 0 or not 0 < self.lasso_keep <= 1 or self.lasso_strength < 0:
            raise IncaError("VQT needs queries >= 0, 0 < lasso_keep <= 1 and lasso_strength >= 0")
        self._layer_overrides()  # fails early on a malformed layer_queries

    def _layer_overrides(self) -> dict[int, int]:
        out = {}
        for item in filter(str.strip, str(self.layer_queries).split(",")):
            pair = _PAIR.match(item)
            if pair is None:
                raise IncaError(
                    f"layer_queries takes BLOCK:COUNT pairs such as '0:0,11:4', got {item!r}"
                )
            out[int(pair[1])] = int(pair[2])
        return out

    def query_counts(self, depth: int) -> list[int]:
        """Query tokens for each of ``depth`` blocks: ``queries`` unless overridden."""
        counts = [self.queries] * depth
        for block, count in self._layer_overrides().items():
            if not -depth <= block < depth:
                raise IncaError(f"layer_queries names block {block}; this backbone has {depth}")
            counts[block] = count
        if not any(counts):
            raise IncaError("VQT needs at least one query token (queries or layer_queries)")
        return counts
