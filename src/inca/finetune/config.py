"""The methods trained end to end through the backbone, compared against InCA.

Full, partial (last k blocks), LoRA (through Hugging Face ``peft``) and StochCA train a copy of
the backbone plus a new linear head on [CLS, mean of the patch tokens] of the final normed
tokens (the features the linear probe reads). VQT keeps the backbone frozen and trains query
tokens per block and a head on them (``inca.finetune.vqt``).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from inca.errors import IncaError

METHODS = ("full", "partial", "lora", "stochca", "vqt")
_PAIR = re.compile(r"^\s*(-?\d+)\s*:\s*(\d+)\s*$")  # "11:4"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "query", "key", "value")


@dataclass(frozen=True)
class FineTuneConfig:
    """method: full | partial | lora | stochca | vqt. lr: backbone learning rate (VQT: queries
    and head); head_lr: the new head's.
    layer_decay: layer-wise lr decay (block i of L gets lr·decay^(L-i); 1 = none).
    blocks: how many last blocks "partial" trains. lora_r / lora_alpha / lora_dropout: LoRA rank,
    scale and dropout on the attention projections. grad_checkpointing: recompute block
    activations in the backward instead of storing them (less memory, ~30% more time).

    StochCA: stochca_p, the chance that a block's self-attention attends to the frozen model's
    keys/values instead (one draw per block per step, or per sample with stochca_per_sample).
    VQT: queries, the query tokens per block; layer_queries, per-block overrides "BLOCK:COUNT,..."
    (e.g. "0:0,11:4"); vqt_naive, the append-and-mask reference path that keeps the whole graph
    (for measuring; same numbers); lasso_keep < 1 selects that fraction of the head's input
    features by group lasso (strength lasso_strength), then refits the head on them."""

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
    stochca_p: float = 0.1
    stochca_per_sample: bool = False
    queries: int = 1
    layer_queries: str = ""
    vqt_naive: bool = False
    lasso_keep: float = 1.0
    lasso_strength: float = 1e-3

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
        if self.grad_checkpointing and self.method == "stochca":
            raise IncaError(
                "StochCA cannot use grad_checkpointing: the recomputed blocks would attend to "
                "their own keys/values instead of the frozen ones; drop grad_checkpointing"
            )
        if not 0 <= self.stochca_p <= 1:
            raise IncaError(f"stochca_p is a probability, got {self.stochca_p}")
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
