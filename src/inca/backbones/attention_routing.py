"""Reach into a Hugging Face transformer's attention: read or replace each block's keys and values.

VQT and StochCA both need one thing the blocks do not offer: the keys and values of a block's
attention, after projection and head split, to read them (what the frozen model computes) or to
swap them (attend to another stream's keys and values). Transformers v5 routes every ViT, DeiT,
DINOv2, CLIP and SigLIP attention through one dispatch point, ``ALL_ATTENTION_FUNCTIONS``, which
receives ``(module, query, key, value, mask)`` with ``key``/``value`` shaped ``(B, H, T, hd)``.
inca registers one attention function there that looks the calling module up in the active
routes, lets the route see or replace ``(key, value)``, and then runs the usual scaled
dot-product attention. Outside :func:`route_attention` the models are untouched: the config's
attention implementation is switched only for the duration of the ``with`` block.

Because the route replaces keys/values *after* the projections, the query count and the key
count may differ (queries of Q learned tokens against the T tokens of an image), which a
mask-based formulation would pay for with (T + Q)^2 attention.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn

from inca.errors import IncaError

ROUTED = "inca_routed"
KEY_NAMES = ("k_proj", "key")
# (key (B, H, T, hd), value (B, H, T, hd)) -> (key, value) to attend to
KVRoute = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]

_active: dict[int, KVRoute] = {}  # id(attention module) -> route, while a `with` block is open


def _routed_attention(
    module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Any, **kwargs: Any
) -> tuple[Tensor, Any]:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    route = _active.get(id(module))
    if route is not None:
        key, value = route(key, value)
        if key.dtype != query.dtype:  # frozen bf16 keys under a float32 query, or the reverse
            key, value = key.to(query.dtype), value.to(query.dtype)
    return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ROUTED, _routed_attention)


def attention_module(block: nn.Module) -> nn.Module:
    """The module inside a transformer block that projects keys and calls the attention."""
    found = [
        m
        for m in block.modules()
        if hasattr(m, "config")
        and any(isinstance(getattr(m, n, None), nn.Linear) for n in KEY_NAMES)
    ]
    if len(found) != 1:
        raise IncaError(
            f"{type(block).__name__}: expected one attention module with a key projection "
            f"({' or '.join(KEY_NAMES)}), found {len(found)}; VQT and StochCA need a Hugging Face "
            "transformer whose attention goes through transformers' attention functions"
        )
    return found[0]


@contextmanager
def route_attention(routes: Mapping[nn.Module, KVRoute]) -> Iterator[None]:
    """Within the block, the attention of each module in ``routes`` sees its keys/values through
    its route (a route returning its inputs unchanged only reads them)."""
    _register()
    configs = {id(m.config): m.config for m in routes}
    previous = {k: c._attn_implementation for k, c in configs.items()}
    clash = [m for m in routes if id(m) in _active]
    if clash:
        raise IncaError("an attention module is already routed (nested routes of one module)")
    try:
        for config in configs.values():
            config._attn_implementation = ROUTED
        _active.update({id(m): r for m, r in routes.items()})
        yield
    finally:
        for m in routes:
            _active.pop(id(m), None)
        for k, config in configs.items():
            config._attn_implementation = previous[k]


class StopForward(Exception):
    """Raised by a route to end a forward pass once everything needed has been read."""


def capture_route(
    store: dict[int, tuple[Tensor, Tensor]], index: int, stop: bool = False
) -> KVRoute:
    """A route that records block ``index``'s keys/values in ``store`` (and may end the pass)."""

    def route(key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        store[index] = (key, value)
        if stop:
            raise StopForward
        return key, value

    return route
