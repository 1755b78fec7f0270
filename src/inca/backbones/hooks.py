"""Any ``torch.nn.Module`` as a backbone, its taps given as module-name patterns.

Patterns match dotted module names segment by segment (``*`` never crosses a dot), so
``blocks.*`` reads every block of a timm-style ViT but not ``blocks.0.attn``, and ``layer?``
reads the four stages of a ResNet. CNN feature maps (B, C, H, W) become tokens (B, H*W, C).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from inca.backbones.base import Backbone
from inca.backbones.preprocess_spec import Preprocess
from inca.errors import IncaError


def match_modules(model: nn.Module, pattern: str) -> list[str]:
    """Dotted module names matching ``pattern`` segment by segment, in definition order."""
    want = pattern.split(".")
    names = [n for n, _ in model.named_modules() if n]
    return [
        n
        for n in names
        if len(parts := n.split(".")) == len(want)
        and all(fnmatch.fnmatchcase(p, w) for p, w in zip(parts, want, strict=True))
    ]


def resolve_taps(model: nn.Module, taps: Sequence[str] | Mapping[str, str]) -> dict[str, str]:
    """tap name -> module path: patterns expand to their matches (named by module path)."""
    if isinstance(taps, str):
        taps = [taps]
    pairs = taps.items() if isinstance(taps, Mapping) else [(None, p) for p in taps]
    out: dict[str, str] = {}
    for tap, pattern in pairs:
        found = match_modules(model, pattern)
        if not found:
            top = [n for n, _ in model.named_modules() if n and n.count(".") <= 1][:40]
            raise IncaError(
                f"tap pattern {pattern!r} matches no module of "
                f"{type(model).__name__}; some module names: {', '.join(top)}"
            )
        if tap is not None and len(found) > 1:
            raise IncaError(
                f"tap {tap!r}: pattern {pattern!r} matches {len(found)} modules; "
                "a named tap needs exactly one"
            )
        for path in found:
            out[tap or path] = path
    if not out:
        raise IncaError("no taps given: pass taps=[module name patterns], e.g. ['blocks.*']")
    return out


def hooked_backbone(
    model: nn.Module,
    taps: Sequence[str] | Mapping[str, str],
    name: str | None = None,
    preprocess: Preprocess | None = None,
    image_size: int = 224,
    device: str | torch.device | None = None,
    precision: str | None = "auto",
    **preprocess_options: Any,
) -> Backbone:
    """Wrap any module; its taps are the outputs of the modules ``taps`` names or matches."""
    if not isinstance(model, nn.Module):
        raise IncaError(f"expected a torch.nn.Module, got {type(model).__name__}")
    preprocess = preprocess or Preprocess(image_size=image_size, **preprocess_options)
    return Backbone(
        model,
        name=name or type(model).__name__,
        preprocess=preprocess,
        tap_modules=resolve_taps(model, taps),
        device=device,
        precision=precision,
        clone_outputs=True,  # CNNs add residuals in place (out += identity)
        family="generic",
    )
