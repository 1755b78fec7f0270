"""Multi-tap adapters: one adapter attends to the tokens of several taps at once.

A member's tap may be a *tap group*, written ``block.5+block.8``: the adapter then reads the
groups' normalised tokens joined along the token axis, (B, T5 + T8, D), so one softmax ranks the
tokens of both depths against each other (a mid-level texture token can win over a late
semantic one). Nothing else changes: the tokens of each tap are still normalised once and
shared by every adapter reading it, and a task's ``taps`` lists the single taps its backbone
must give. Only adapters whose config says ``multi_tap`` (attention pooling: InCA) accept a
group; a linear probe's CLS or mean of two depths is better had from two probes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from inca.errors import IncaError

SEP = "+"


def tap_parts(tap: str) -> list[str]:
    """'block.5+block.8' -> ['block.5', 'block.8']; a single tap -> [tap]."""
    parts = tap.split(SEP)
    if any(not p for p in parts) or len(set(parts)) != len(parts):
        raise IncaError(
            f"tap group {tap!r}: name each tap once, joined by {SEP!r} (e.g. block.5+block.8)"
        )
    return parts


def is_group(tap: str) -> bool:
    return SEP in tap


def join_taps(parts: Sequence[str], order: Sequence[str]) -> str:
    """The group of ``parts``, in ``order`` (the backbone's, shallow to deep): one spelling per
    group, so block.8+block.5 and block.5+block.8 name the same adapter."""
    return SEP.join(sorted(dict.fromkeys(parts), key=list(order).index))


def single_taps(taps: Sequence[str]) -> list[str]:
    """The single taps that ``taps`` (single or groups) read, each once, in first-use order."""
    return list(dict.fromkeys(p for t in taps for p in tap_parts(t)))


def group_width(tap: str, widths: Mapping[str, int], where: str = "") -> int:
    """The token width D the group's taps share; a clear error when a tap is unknown or the
    widths differ (tokens of different widths cannot be joined)."""
    parts = tap_parts(tap)
    unknown = [p for p in parts if p not in widths]
    if unknown:
        raise IncaError(
            f"{where}tap {unknown[0]!r} of {tap!r} is not a tap of this backbone; taps: "
            f"{', '.join(widths)}"
        )
    dims = {widths[p] for p in parts}
    if len(dims) > 1:
        raise IncaError(
            f"{where}tap group {tap!r} joins taps of different widths "
            f"({', '.join(f'{p}: {widths[p]}' for p in parts)}); group taps of one width"
        )
    return dims.pop()


def group_tokens(tokens: Mapping[str, Tensor], tap: str) -> Tensor:
    """{tap: (B, T, D)} -> the tokens ``tap`` reads: (B, T, D), or for a group the taps' tokens
    joined along the token axis, (B, ΣT, D)."""
    if not is_group(tap):
        return tokens[tap]
    return torch.cat([tokens[p] for p in tap_parts(tap)], dim=-2)


def depth_index(tap: str, order: Sequence[str]) -> float:
    """Where ``tap`` sorts among the backbone's taps (``order``, shallow to deep): its index; a
    group just after its deepest tap (reports list adapters by depth)."""
    if not is_group(tap):
        return order.index(tap)
    return max(order.index(p) for p in tap_parts(tap)) + 0.5
