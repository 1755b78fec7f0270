"""Open-InCA: a cross-attention adapter whose classes are independent of each other
(the InCA paper's class-incremental variant, arXiv 2303.04105).

Each class c owns a learned query q_c and an output unit (w_c, b_c): the query attends to the
tap's tokens through projections shared by a *set* of classes, and yields that class's logit
alone::

    x = LayerNorm_s(tokens)                              set s = the class's projection set
    z_c = q_c + W_o,s MHA(q = q_c, k = W_k,s x, v = W_v,s x)
    logit_c = scale_c · (w_c · LayerNorm(z_c) + b_c) + shift_c

No logit depends on another class's parameters, so classes can be added (new rows, trained
alone), removed (rows deleted) and composed (the sets and rows of two adapters side by side)
while every other class's logit stays bit-identical. Per class that is q_c and w_c, 2·d + 1
numbers (d = the tap's width); a projection set (4·d² + 5·d) is trained on the first classes and
frozen for classes added later, or a set of their own for the classes of each later step (the
default: measured better, see ``inca bench-classes``), and a merged adapter keeps each side's
own. ``scale_c``/``shift_c`` calibrate classes trained apart onto one scale; they are buffers (1
and 0 until a calibration fits them) that training never touches.

``token_means`` (C, T, D), when ``stat_tokens`` = T > 0: each class's mean normalised token map
at the tap, taken from its own training images when it was trained. No image is kept; classes
added later train against *pseudo* old-class samples made from them (``pseudo_old``), so a task
learns new classes from new data alone without its new classes firing on the old ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from inca.adapters.base import Adapter, AdapterConfig
from inca.adapters.registry import register_adapter
from inca.errors import IncaError

SET_PARAMS = ("norm_weight", "norm_bias", "k_weight", "v_weight", "v_bias", "o_weight", "o_bias")
CLASS_PARAMS = ("queries", "weight", "bias")
CLASS_BUFFERS = ("class_set", "calib_scale", "calib_shift", "token_means")


@dataclass(frozen=True)
class OpenInCAConfig(AdapterConfig):
    """heads: attention heads (None: width/64, at least 1); projection_sets: how many
    independently trained sets of projections the classes use (1 for an adapter trained on
    its classes at once; a merge of two adapters has both sides' sets); stat_tokens: the tokens
    T of each class's stored mean token map (0: none stored)."""

    kind: ClassVar[str] = "open-inca"
    heads: int | None = None
    projection_sets: int = 1
    stat_tokens: int = 0

    def __post_init__(self) -> None:
        if self.heads is not None and self.heads < 1:
            raise IncaError(f"open-inca adapter: heads must be at least 1, got {self.heads}")
        if self.projection_sets < 1:
            raise IncaError(
                f"open-inca adapter: projection_sets must be at least 1, got {self.projection_sets}"
            )
        if self.stat_tokens < 0:
            raise IncaError(f"open-inca adapter: stat_tokens must be >= 0, got {self.stat_tokens}")

    def resolved_heads(self, width: int) -> int:
        h = self.heads or max(1, width // 64)
        if width % h:
            raise IncaError(
                f"open-inca adapter: width {width} does not split into {h} heads; choose heads "
                f"that divide {width}"
            )
        return h


@register_adapter(OpenInCAConfig)
class OpenInCAAdapter(Adapter):
    def __init__(
        self, config: OpenInCAConfig, in_dim: int, num_classes: int, num_prefix_tokens: int = 1
    ) -> None:
        super().__init__()
        self.config, self.in_dim, self.num_classes = config, in_dim, num_classes
        self.num_prefix_tokens = num_prefix_tokens
        d, p = in_dim, config.projection_sets
        self.heads = config.resolved_heads(d)
        self.norm_weight = nn.Parameter(torch.ones(p, d))  # each set's token LayerNorm affine
        self.norm_bias = nn.Parameter(torch.zeros(p, d))
        init = nn.init.kaiming_uniform_
        self.k_weight = nn.Parameter(torch.stack([init(torch.empty(d, d), a=5**0.5)
                                                  for _ in range(p)]))  # fmt: skip
        self.v_weight = nn.Parameter(torch.stack([init(torch.empty(d, d), a=5**0.5)
                                                  for _ in range(p)]))  # fmt: skip
        self.v_bias = nn.Parameter(torch.zeros(p, d))
        self.o_weight = nn.Parameter(torch.stack([init(torch.empty(d, d), a=5**0.5)
                                                  for _ in range(p)]))  # fmt: skip
        self.o_bias = nn.Parameter(torch.zeros(p, d))
        self.queries = nn.Parameter(torch.randn(num_classes, d) * 0.02)  # one per class
        self.weight = nn.Parameter(torch.randn(num_classes, d) * d**-0.5)  # its output unit
        self.bias = nn.Parameter(torch.zeros(num_classes))
        self.register_buffer("class_set", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("calib_scale", torch.ones(num_classes))
        self.register_buffer("calib_shift", torch.zeros(num_classes))
        self.register_buffer(  # persistent only when there are some: older tasks load as saved
            "token_means", torch.zeros(num_classes, config.stat_tokens, d),
            persistent=config.stat_tokens > 0,
        )  # fmt: skip

    def stacked_forward(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        """params: name -> (N, *shape); x: normalised tokens (N, B, T, D) -> logits (N, B, C).
        Each projection set runs once, for all of its classes' queries."""
        N, B, T, D = x.shape
        h = self.heads
        e = D // h
        out = x.new_zeros((N, B, self.num_classes), dtype=torch.float32)
        for s in range(self.config.projection_sets):
            rows = (self.class_set == s).nonzero().flatten()
            if not len(rows):
                continue
            P = {k: params[k][:, s] for k in SET_PARAMS}
            xa = x.float() * P["norm_weight"].view(N, 1, 1, D) + P["norm_bias"].view(N, 1, 1, D)
            k = torch.einsum("nbtd,ned->nbte", xa, P["k_weight"])  # (N, B, T, D)
            v = torch.einsum("nbtd,ned->nbte", xa, P["v_weight"]) + P["v_bias"].view(N, 1, 1, D)
            q = params["queries"][:, rows]  # (N, c, D)
            c = len(rows)
            qh = q.view(N, 1, c, h, e).expand(N, B, c, h, e).reshape(N * B, c, h, e)
            attn = F.scaled_dot_product_attention(
                qh.transpose(1, 2),
                k.reshape(N * B, T, h, e).transpose(1, 2),
                v.reshape(N * B, T, h, e).transpose(1, 2),
            )  # (N*B, h, c, e)
            attn = attn.transpose(1, 2).reshape(N, B, c, D)
            z = q.unsqueeze(1) + torch.einsum("nbcd,ned->nbce", attn, P["o_weight"])
            z = F.layer_norm(z + P["o_bias"].view(N, 1, 1, D), (D,))
            logit = (z * params["weight"][:, rows].unsqueeze(1)).sum(-1)
            logit = logit + params["bias"][:, rows].unsqueeze(1)  # (N, B, c)
            out[:, :, rows] = logit * self.calib_scale[rows] + self.calib_shift[rows]
        return out

    def class_params(self) -> int:
        """Trainable numbers each class owns (its query, output unit and bias)."""
        return 2 * self.in_dim + 1
