"""The InCA cross-attention adapter (arXiv 2303.04105).

    x = LayerNorm(tokens)                       (B, T, D), learnable affine (gamma, beta)
    z = Q + MHA(q = Q, k = x, v = x)            (B, m, d), m learned queries of width d
    z = z + MLP(LayerNorm(z))                   optional (mlp_ratio > 0)
    logits = Linear(mean_m LayerNorm(z))        (B, C)

With D = d = 1024 the four projections are 4·D² ≈ 4.2 M parameters; with norms, query and a
100-class head the adapter is 4.3 M, 1.41% of ViT-L/16 (the paper quotes 1.3%). The key
projection has no bias: ``q·b_k`` is the same for every token, so it cancels in the softmax.

Two exact forms of the same function, chosen by shape (``path="auto"``):

* ``plain``: project every token to keys and values, then attention. Costs ~2·T·D·d per image.
* ``folded``: with few queries the keys and values of every token are not needed. Per head,
  ``q·(W_k x_t + b_k) = (W_kᵀ q)·x_t + const`` (the constant cancels in the softmax) and
  ``Σ_t α_t (W_v x_t + b_v) = W_v (Σ_t α_t x_t) + b_v`` (the weights sum to one). The LayerNorm's
  affine folds the same way, so the adapter reads the shared *non-affine* normalised tokens x̂
  that every adapter on the tap uses. Costs ~2·T·D·m·h + m·D·d: for ViT-S at 112 px (T=65,
  D=d=384, h=6, m=1) that is about 40x fewer multiply-adds than ``plain`` by this count, and
  25-30x with the output projection, as torch's FLOP counter measures it (tests/test_bench.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from inca.adapters.base import Adapter, AdapterConfig, stacked_layer_norm, stacked_linear
from inca.adapters.registry import register_adapter
from inca.errors import IncaError

PATHS = ("auto", "plain", "folded")


@dataclass(frozen=True)
class InCAConfig(AdapterConfig):
    """queries: m learned queries; dim: their width d (None: the tap's width D); heads: h
    (None: d/64, at least 1, or the divisor of d nearest it; a plan may write ``D/64``);
    mlp_ratio: hidden width of the residual MLP as a multiple of d (0: no MLP); dropout: on
    the attention weights while training."""

    kind: ClassVar[str] = "inca"
    multi_tap: ClassVar[bool] = True  # attention pools any number of tokens, of any depths
    queries: int = 1
    dim: int | None = None
    heads: int | None = None
    mlp_ratio: float = 0.0
    dropout: float = 0.0
    path: str = "auto"

    def __post_init__(self) -> None:
        if self.queries < 1:
            raise IncaError(f"inca adapter: queries must be at least 1, got {self.queries}")
        if self.dim is not None and self.dim < 1:
            raise IncaError(f"inca adapter: dim must be positive, got {self.dim}")
        if self.heads is not None and self.heads < 1:
            raise IncaError(f"inca adapter: heads must be at least 1, got {self.heads}")
        if self.mlp_ratio < 0:
            raise IncaError(f"inca adapter: mlp_ratio must be >= 0, got {self.mlp_ratio}")
        if not 0 <= self.dropout < 1:
            raise IncaError(f"inca adapter: dropout must be in [0, 1), got {self.dropout}")
        if self.path not in PATHS:
            raise IncaError(f"inca adapter: path must be one of {PATHS}, got {self.path!r}")

    def resolved(self, in_dim: int) -> tuple[int, int]:
        """(d, h) for tokens of width ``in_dim``, checked: d must split evenly into h heads."""
        d = self.dim or in_dim
        h = self.heads or default_heads(d)
        if d % h:
            raise IncaError(
                f"inca adapter: width {d} does not split into {h} heads; choose heads that "
                f"divide {d} (e.g. {', '.join(str(k) for k in range(1, 17) if d % k == 0)})"
            )
        return d, h


def nearest_divisor(width: int, target: float) -> int:
    """The divisor of ``width`` nearest ``target`` (the smaller on a tie): a head count that
    splits the width evenly."""
    return min((k for k in range(1, width + 1) if width % k == 0), key=lambda k: abs(k - target))


def default_heads(width: int) -> int:
    """Heads when none are given: width/64, at least 1 (what saved adapters were built with);
    for a width that does not split into that many, the divisor nearest width/64."""
    h = max(1, width // 64)
    return h if width % h == 0 else nearest_divisor(width, width / 64)


@register_adapter(InCAConfig)
class InCAAdapter(Adapter):
    def __init__(
        self, config: InCAConfig, in_dim: int, num_classes: int, num_prefix_tokens: int = 1
    ) -> None:
        super().__init__()
        self.config, self.in_dim, self.num_classes = config, in_dim, num_classes
        self.num_prefix_tokens = num_prefix_tokens
        d, h = config.resolved(in_dim)
        self.dim, self.heads, self.head_dim = d, h, d // h
        self.norm_weight = nn.Parameter(torch.ones(in_dim))  # the token LayerNorm's affine
        self.norm_bias = nn.Parameter(torch.zeros(in_dim))
        self.queries = nn.Parameter(torch.randn(config.queries, d) * 0.02)  # (m, d)
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(in_dim, d, bias=False)  # a key bias cancels in the softmax
        self.v_proj = nn.Linear(in_dim, d)
        self.o_proj = nn.Linear(d, d)
        hidden = int(round(config.mlp_ratio * d))
        self.mlp = (
            nn.Sequential(nn.LayerNorm(d), nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))
            if hidden
            else None
        )
        self.out_norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, num_classes)

    def choose_path(self, tokens: int) -> str:
        """The cheaper exact form for ``tokens`` tokens per image (multiply-adds per image)."""
        if self.config.path != "auto":
            return self.config.path
        m, h, d, D = self.config.queries, self.heads, self.dim, self.in_dim
        plain = 2 * tokens * D * d + 2 * tokens * m * d
        folded = 2 * tokens * D * m * h + m * D * d + m * h * d * D
        return "folded" if folded <= plain else "plain"

    def stacked_forward(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        """params: name -> (N, *shape); x: normalised tokens (N, B, T, D) -> logits (N, B, C)."""
        if self.choose_path(x.shape[2]) == "folded":
            return self._attend_folded(params, x)
        return self._finish(params, self._attend_plain(params, x))

    def _finish(self, P: dict[str, Tensor], attn: Tensor) -> Tensor:
        """Attention output (N, B, m, d) -> logits (N, B, C): output projection, MLP, head."""
        z = P["queries"].unsqueeze(1) + stacked_linear(attn, P["o_proj.weight"], P["o_proj.bias"])
        if self.mlp is not None:  # (N, B, m, d), pre-norm residual MLP
            hidden = stacked_layer_norm(z, P["mlp.0.weight"], P["mlp.0.bias"])
            hidden = F.gelu(stacked_linear(hidden, P["mlp.1.weight"], P["mlp.1.bias"]))
            z = z + stacked_linear(hidden, P["mlp.3.weight"], P["mlp.3.bias"])
        pooled = stacked_layer_norm(z, P["out_norm.weight"], P["out_norm.bias"]).mean(2)
        return stacked_linear(pooled, P["head.weight"], P["head.bias"])  # (N, B, C)

    # ------------------------------------------------ the folded form, in three phases
    # A bank runs phase 2 for every adapter reading a tap at once (``inca.adapters.shared``):
    # the token-sized matmuls then have K·m·h rows instead of m·h, several times faster on CPU.
    def pools_tokens(self, tokens: int) -> bool:
        """Whether this adapter reads the tap only through attention pooling (phase 2), which a
        bank may then share with the other adapters on the same tap."""
        return self.choose_path(tokens) == "folded" and not (self.training and self.config.dropout)

    def folded_queries(self, P: dict[str, Tensor]) -> Tensor:
        """Phase 1: u = W_kᵀ q per head with the LayerNorm's scale and 1/√e folded in:
        (N, m*h, D). The key bias and the LayerNorm's shift add the same q·const to every
        token's logit: no effect on the softmax."""
        N, D = P["norm_weight"].shape
        h, e = self.heads, self.head_dim
        w_k = P["k_proj.weight"].view(N, h, e, D)
        u = torch.einsum("nmhe,nhed->nmhd", self._queries(P), w_k)
        return (u * (P["norm_weight"].view(N, 1, 1, D) / math.sqrt(e))).reshape(N, -1, D)

    def from_pooled(
        self,
        P: dict[str, Tensor],
        pooled: Tensor,
        fold: tuple[Tensor, Tensor] | None = None,
        mass: Tensor | float = 1.0,
    ) -> Tensor:
        """Phase 3: pooled tokens Σ_t α_t x̂_t, (N, B, m*h, D) -> logits (N, B, C).

        W_v (g ⊙ p + mass·b) + mass·b_v: the LayerNorm's affine folds into the value weights,
        so nothing element-wise touches the (N, B, m, h, D) pooled tokens. ``fold``: those
        folded weights (``value_fold``) computed once, when the weights do not change
        (serving)."""
        N, B, _, D = pooled.shape
        m, h, e = self.config.queries, self.heads, self.head_dim
        pooled = pooled.reshape(N, B, m, h, D)  # in the tokens' dtype: the value projection's
        # matmul runs in it (bf16 from a bf16 cache or backbone), everything after it in fp32
        w, shift = fold if fold is not None else self.value_fold(P)
        v = torch.einsum("nbmhd,nhed->nbmhe", pooled, w.to(pooled.dtype)).float()
        v = v + mass * shift.view(N, 1, 1, h, e)
        return self._finish(P, v.reshape(N, B, m, h * e))

    def value_fold(self, P: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The value projection with the token LayerNorm's affine folded in: per head
        W_v ⊙ g, (N, h, e, D), and the shift W_v b + b_v, (N, h, e)."""
        N, D = P["norm_weight"].shape
        h, e = self.heads, self.head_dim
        w_v = P["v_proj.weight"].view(N, h, e, D)
        w = w_v * P["norm_weight"].view(N, 1, 1, D)
        shift = torch.einsum("nhed,nd->nhe", w_v, P["norm_bias"]) + P["v_proj.bias"].view(N, h, e)
        return w, shift

    def _queries(self, P: dict[str, Tensor]) -> Tensor:
        """The projected queries, per head: (N, m, h, e)."""
        q = stacked_linear(P["queries"], P["q_proj.weight"], P["q_proj.bias"])  # (N, m, d)
        return q.view(q.shape[0], self.config.queries, self.heads, self.head_dim)

    def _attend_plain(self, P: dict[str, Tensor], x: Tensor) -> Tensor:
        """Keys and values for every token, then attention: (N, B, T, D) -> (N, B, m, d)."""
        N, B, T, D = x.shape
        m, h, e = self.config.queries, self.heads, self.head_dim
        g, b = P["norm_weight"].view(N, 1, 1, D), P["norm_bias"].view(N, 1, 1, D)
        xa = x.float() * g + b  # the LayerNorm's affine
        k = stacked_linear(xa, P["k_proj.weight"])  # (N, B, T, d)
        v = stacked_linear(xa, P["v_proj.weight"], P["v_proj.bias"])  # (N, B, T, d)
        q = self._queries(P).unsqueeze(1).expand(N, B, m, h, e)
        q = q.reshape(N * B, m, h, e).transpose(1, 2)  # (N*B, h, m, e)
        k = k.reshape(N * B, T, h, e).transpose(1, 2)  # (N*B, h, T, e)
        v = v.reshape(N * B, T, h, e).transpose(1, 2)
        p = self.config.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (N*B, h, m, e)
        return out.transpose(1, 2).reshape(N, B, m, h * e)

    def _attend_folded(self, P: dict[str, Tensor], x: Tensor) -> Tensor:
        """Keys folded into the queries, values applied after pooling, each adapter on its
        own tokens (phases 1-3 with phase 2 per adapter): -> logits (N, B, C)."""
        N, B, T, D = x.shape
        m, h = self.config.queries, self.heads
        u = self.folded_queries(P)  # (N, m*h, D)
        # (N, m*h, D) @ (N, D, B*T): the long B*T side is the reduction of the backward's
        # grad_u = dlogits @ x, which keeps x row-major there (2.3x faster than x @ uᵀ)
        # x may be bf16 (the bank's token dtype): the two token-sized matmuls run in it,
        # softmax and everything after pooling in fp32
        logits = torch.bmm(u.to(x.dtype), x.reshape(N, B * T, D).transpose(1, 2))
        alpha = logits.float().view(N, m * h, B, T).softmax(-1)  # over tokens
        alpha = alpha.transpose(1, 2).reshape(N * B, m * h, T)  # (N*B, m*h, T)
        if self.training and self.config.dropout:
            alpha = F.dropout(alpha, self.config.dropout)
            mass = alpha.sum(-1).view(N, B, m, h, 1)  # dropped weights no longer sum to one
        else:
            mass = 1.0
        pooled = torch.bmm(alpha.to(x.dtype), x.reshape(N * B, T, D))  # Σ_t α_t x̂_t
        return self.from_pooled(P, pooled.view(N, B, m * h, D), mass=mass)
