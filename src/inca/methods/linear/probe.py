"""The linear probe: pooled normalised tokens of one tap, then one linear classifier.

Pooling reads the tap's shared non-affine LayerNorm'd tokens x̂ (the same the InCA adapters
read): "cls" is the first token, "mean" the mean of the patch tokens (after any prefix tokens),
"max" their maximum per channel; parts joined by "+" are concatenated: "cls+mean" is the usual
DINOv2 linear-eval feature, "mean+max" a CNN map's (global average and max pooling), which has
no CLS token.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from inca.adapters.base import Adapter, AdapterConfig, stacked_linear
from inca.adapters.registry import register_adapter
from inca.errors import IncaError

POOL_PARTS = ("cls", "mean", "max")
POOLS = ("cls", "mean", "max", "cls+mean", "mean+max", "cls+max", "cls+mean+max")
SOLVERS = ("lbfgs", "adamw")


@dataclass(frozen=True)
class LinearProbeConfig(AdapterConfig):
    """pool: which features; solver: "lbfgs" fits the probe as the literature does (full-batch
    L-BFGS on the multinomial loss, to convergence, its L2 penalty swept on validation; see
    ``inca.methods.linear.solver``), "adamw" trains it beside the other adapters by SGD."""

    kind: ClassVar[str] = "linear"
    pool: str = "cls+mean"
    solver: str = "adamw"

    def __post_init__(self) -> None:
        if self.pool not in POOLS:
            raise IncaError(f"linear probe: pool must be one of {POOLS}, got {self.pool!r}")
        if self.solver not in SOLVERS:
            raise IncaError(f"linear probe: solver must be one of {SOLVERS}, got {self.solver!r}")

    @property
    def solved(self) -> bool:
        return self.solver == "lbfgs"


@register_adapter(LinearProbeConfig)
class LinearProbe(Adapter):
    def __init__(
        self, config: LinearProbeConfig, in_dim: int, num_classes: int, num_prefix_tokens: int = 1
    ) -> None:
        super().__init__()
        if "cls" in config.pool and num_prefix_tokens == 0:
            raise IncaError(
                f"linear probe: pool {config.pool!r} needs a CLS token, but this backbone's "
                "taps have none (e.g. CNN maps); use pool='mean', 'max' or 'mean+max'"
            )
        self.config, self.in_dim, self.num_classes = config, in_dim, num_classes
        self.num_prefix_tokens = num_prefix_tokens
        features = in_dim * len(config.pool.split("+"))
        self.head = nn.Linear(features, num_classes)

    def stacked_forward(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        """x: normalised tokens (N, B, T, D) -> logits (N, B, C)."""
        parts = self.config.pool.split("+")
        features = select_pool(pool_tokens(x, self.num_prefix_tokens, parts), self.config.pool)
        return stacked_linear(features, params["head.weight"], params["head.bias"])


def pool_tokens(
    x: Tensor, num_prefix_tokens: int, parts: tuple[str, ...] | list[str] = ("cls", "mean")
) -> dict[str, Tensor]:
    """Normalised tokens (..., T, D) -> {part: (..., D)} in float32 for each of ``parts``: "cls"
    the first token (when there is a prefix), "mean" the mean of the patch tokens, "max" their
    maximum per channel. The one definition of the probe's features: the L-BFGS solver pools
    through it too, so a fitted probe gives the logits it was fitted for."""
    out = {}
    p = num_prefix_tokens
    if "cls" in parts and p:
        # a copy, always: x may be a buffer the next batch overwrites (the cache's reads), and
        # .float() of float32 tokens would return a view of it
        out["cls"] = x[..., 0, :].to(torch.float32, copy=True)
    if "mean" in parts:
        # the mean of the patch tokens as a matmul with averaging weights: no copy of x
        T = x.shape[-2]
        weights = x.new_zeros(T)
        weights[p:] = 1.0 / (T - p)
        out["mean"] = torch.matmul(weights, x).float()
    if "max" in parts:
        out["max"] = x[..., p:, :].amax(-2).float()
    return out


def select_pool(pools: Mapping[str, Tensor], pool: str) -> Tensor:
    """Pooled features (``pool_tokens``) -> those of ``pool``; parts joined by "+" are
    concatenated in the order written, (B, k·D), the order the probe's head reads them."""
    parts = pool.split("+")
    return torch.cat([pools[p] for p in parts], -1) if len(parts) > 1 else pools[parts[0]]
