"""The analytic head: a ridge classifier over a tap's pooled descriptors, solved in closed form
from accumulated statistics (``statistics.RidgeStatistics``), never trained by gradient.

    φ(x) = [descriptors(LayerNorm(tokens)), 1]        (F + 1,)    see ``descriptors``
    logits = W φ(x)                                   W: (C, F + 1) = ((G + λI)⁻¹ Q)ᵀ

It is Open-InCA's default head for classes that arrive over time: a class is a column of Q,
so adding classes from their own images alone gives the joint solve over every image seen, and
removing one drops its row of W, leaving every other row bit-identical. Adding classes refits
the shared solve: the old classes' rows change (they learn to stay quiet on the new classes);
that is the point, and ``inca classes add`` says so.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import Tensor, nn

from inca.adapters.base import Adapter, AdapterConfig
from inca.adapters.registry import register_adapter
from inca.errors import IncaError
from inca.methods.analytic.descriptors import default_cells, descriptor_width, descriptors


@dataclass(frozen=True)
class AnalyticConfig(AdapterConfig):
    """cells: cells per side of the descriptor's grid (None: the most that fit
    ``DESCRIPTOR_BUDGET``, resolved and saved when the head is built). The λ of a solve is
    the statistics' choice, recorded in the task's metrics, not part of the head's shape."""

    kind: ClassVar[str] = "analytic"
    cells: int | None = None

    def __post_init__(self) -> None:
        if self.cells is not None and self.cells < 1:
            raise IncaError(f"analytic head: cells must be at least 1, got {self.cells}")

    @property
    def solved(self) -> bool:
        return True


@register_adapter(AnalyticConfig)
class AnalyticHead(Adapter):
    def __init__(self, config: AnalyticConfig, in_dim: int, num_classes: int,
                 num_prefix_tokens: int = 1, patch_tokens: int | None = None) -> None:  # fmt: skip
        super().__init__()
        if config.cells is None:  # without the tap's token count: the width's budget alone
            config = replace(config, cells=default_cells(in_dim, patch_tokens or 1 << 20))
        self.config, self.in_dim, self.num_classes = config, in_dim, num_classes
        self.num_prefix_tokens = num_prefix_tokens
        self.features = descriptor_width(in_dim, config.cells, num_prefix_tokens) + 1
        # a parameter (never trained) so that heads of one shape stack like other adapters
        self.weight = nn.Parameter(torch.zeros(num_classes, self.features), requires_grad=False)

    def features_of(self, x: Tensor) -> Tensor:
        """Normalised tokens (B, T, D) -> φ (B, F + 1), float32."""
        d = descriptors(x, self.num_prefix_tokens, self.config.cells)
        return torch.cat([d, d.new_ones(len(d), 1)], 1)

    def stacked_forward(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        """params["weight"]: (N, C, F + 1); x: (N, B, T, D) -> logits (N, B, C)."""
        phi = torch.stack([self.features_of(xn) for xn in x])  # (N, B, F + 1)
        return torch.einsum("nbf,ncf->nbc", phi, params["weight"].float())

    @torch.no_grad()
    def set_solution(self, weight: Tensor, lam: float) -> AnalyticHead:
        """A new head with ridge weights (F + 1, C), as ``RidgeStatistics.solve`` gives them
        (with the λ it chose, accepted for that call's sake and kept by the caller)."""
        if weight.shape[0] != self.features:
            raise IncaError(f"weights for {weight.shape[0]} features do not fit a head of "
                            f"{self.features}")  # fmt: skip
        head = AnalyticHead(self.config, self.in_dim, weight.shape[1], self.num_prefix_tokens)
        head.weight.copy_(weight.T.float())
        return head.to(self.weight.device).eval()

    def without_class(self, index: int) -> AnalyticHead:
        """This head less class ``index``: every other row of W copied bit for bit."""
        if self.num_classes == 1:
            raise IncaError("cannot remove the last class: a classifier needs one")
        keep = [i for i in range(self.num_classes) if i != index]
        head = AnalyticHead(self.config, self.in_dim, len(keep), self.num_prefix_tokens)
        with torch.no_grad():
            head.weight.copy_(self.weight[keep])
        return head.to(self.weight.device).eval()
