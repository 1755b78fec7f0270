"""What every adapter is: a config dataclass that checks itself, and a module reading one tap.

An adapter reads the *normalised* tokens of one tap, ``x̂ = LayerNorm(tokens)`` without affine,
(B, T, D) float32. The normalisation is shared by every adapter on the same tap (one-to-many
training computes it once per tap and batch); an adapter that wants a learnable affine folds it
into its own weights (see ``inca_xattn``). The adapter returns class logits (B, C).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from inca.adapters.tap_batch import TapBatch
from inca.errors import IncaError
from inca.utils.typed_fields import typed_values


def normalize_tokens(tokens: Tensor) -> Tensor:
    """LayerNorm without affine over the last dim, in float32: (B, T, D) -> (B, T, D).

    The result is an ordinary tensor even when ``tokens`` came from inference mode, so it can
    feed adapters that are being trained.
    """
    x = tokens.float()
    return torch.nn.functional.layer_norm(x, x.shape[-1:]).clone()


def stack_taps(
    tokens: Mapping[str, Tensor],
    taps: Sequence[str],
    normalize: bool,
    dtype: torch.dtype = torch.float32,
) -> Tensor | TapBatch:
    """{tap: (B, T, D)} -> (n_taps, B, T, D), LayerNorm'd (no affine) if ``normalize``; a
    ``TapBatch`` of per-tap tensors when the taps' shapes differ (a CNN's stages).

    One buffer for all taps, filled tap by tap (LayerNorm computes in fp32 whatever ``dtype``
    stores); an ordinary tensor even when the tokens came from inference mode. ``dtype`` bf16
    halves the memory traffic of the adapters' token-sized matmuls, most of their cost.
    """

    def prepared(x: Tensor) -> Tensor:
        return torch.nn.functional.layer_norm(x.to(dtype), x.shape[-1:]) if normalize else x

    first = tokens[taps[0]]
    if any(tokens[t].shape != first.shape for t in taps):
        return TapBatch([prepared(tokens[t]).to(dtype).clone() for t in taps])
    out = torch.empty((len(taps), *first.shape), dtype=dtype, device=first.device)
    for i, t in enumerate(taps):  # tap by tap: one (n_taps, B, T, D) buffer, no second one
        out[i] = prepared(tokens[t])
    return out


@dataclass(frozen=True)
class AdapterConfig:
    """Base of adapter configs: plain values only, validated in ``__post_init__``."""

    kind: ClassVar[str] = ""
    multi_tap: ClassVar[bool] = False  # may read a tap group (``inca.adapters.tap_groups``)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdapterConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise IncaError(
                f"{cls.kind} adapter: unknown option(s) {sorted(unknown)}; "
                f"valid: {', '.join(sorted(known))}"
            )
        return cls(**typed_values(cls, data, f"{cls.kind} adapter"))

    @property
    def solved(self) -> bool:
        """True when a closed-form or full-batch solver fits this adapter instead of the
        one-to-many SGD loop (it then has no learning rate)."""
        return False

    def short(self) -> str:
        """The non-default options as ``key=value`` text, for readable adapter names."""
        default = type(self)()
        diff = {k: v for k, v in self.to_dict().items() if getattr(default, k) != v}
        return json.dumps(diff, sort_keys=True) if diff else ""


class Adapter(nn.Module):
    """An adapter module: normalised tokens (B, T, D) -> logits (B, C).

    Every adapter is written once, in *stacked* form: ``stacked_forward(params, x)`` takes its
    parameters with a leading dimension N (N adapters of the same shape) and tokens
    (N, B, T, D), and returns logits (N, B, C). A single adapter is the case N = 1, so one code
    path serves one adapter and sixty (see :class:`inca.adapters.stack.AdapterStack`).
    """

    config: AdapterConfig
    in_dim: int
    num_classes: int
    num_prefix_tokens: int

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def stack_key(self) -> tuple:
        """Adapters with equal keys have parameters of equal shapes: they can be stacked."""
        return (type(self), self.config, self.in_dim, self.num_classes, self.num_prefix_tokens)

    def stacked_forward(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        """params: name -> (N, *shape); x: (N, B, T, D) -> logits (N, B, C)."""
        raise NotImplementedError

    # An adapter that reads its tap only through softmax attention pooling can share that work
    # with every other such adapter on the tap (``inca.adapters.shared_pool``); InCA's folded
    # form does. The three methods below are its contract; other adapters say False.
    def pools_tokens(self, tokens: int) -> bool:
        """Whether, for taps of ``tokens`` tokens, this adapter runs as the three phases
        ``folded_queries`` -> shared pooling -> ``from_pooled``."""
        return False

    def folded_queries(self, params: dict[str, Tensor]) -> Tensor:
        """params: name -> (N, *shape) -> the queries that pool the tokens, (N, J, D)."""
        raise NotImplementedError

    def from_pooled(self, params: dict[str, Tensor], pooled: Tensor, fold: Any = None) -> Tensor:
        """Pooled tokens (N, B, J, D) -> logits (N, B, C); ``fold``: ``value_fold(params)``
        computed beforehand (None: computed here)."""
        raise NotImplementedError

    def value_fold(self, params: dict[str, Tensor]) -> Any:
        """What ``from_pooled`` derives from the weights alone (folded matrices): computed once
        where the weights do not change (serving), instead of every batch."""
        return None

    def forward(self, x: Tensor) -> Tensor:
        """x: normalised tokens (B, T, D) -> logits (B, C)."""
        params = {k: p.unsqueeze(0) for k, p in self.named_parameters()}
        return self.stacked_forward(params, x.unsqueeze(0))[0]


def stacked_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """N linear layers at once: x (N, ..., i), weight (N, o, i), bias (N, o) -> (N, ..., o)."""
    out = torch.einsum("n...i,noi->n...o", x, weight)
    if bias is not None:
        out = out + bias.view(bias.shape[0], *([1] * (x.ndim - 2)), bias.shape[1])
    return out


def stacked_layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    """N LayerNorms at once: x (N, ..., d), weight and bias (N, d)."""
    shape = (weight.shape[0], *([1] * (x.ndim - 2)), weight.shape[1])
    normed = torch.nn.functional.layer_norm(x, x.shape[-1:], eps=eps)
    return normed * weight.view(shape) + bias.view(shape)
