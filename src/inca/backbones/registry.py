"""Backbones by name: ``load_backbone(name)`` and ``list_backbones()`` (timm's create_model habit).

A name is one of the registered backbones (``inca models``), a local Hugging Face model folder,
``hf:<folder or hub id>``, or a hub id such as ``facebook/dinov2-small`` (needs the network). An
``nn.Module`` is accepted too: a transformers vision transformer gets its standard taps, any other
module needs ``taps=[module name patterns]``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from inca.backbones.base import Backbone
from inca.backbones.hf import hf_backbone
from inca.backbones.hooks import hooked_backbone
from inca.errors import UnknownNameError


@dataclass(frozen=True)
class BackboneEntry:
    name: str
    factory: Callable[..., Backbone]
    description: str


_REGISTRY: dict[str, BackboneEntry] = {}


def register_backbone(name: str, description: str) -> Callable:
    """Decorator: make ``factory(**options) -> Backbone`` loadable as ``name``."""

    def wrap(factory: Callable[..., Backbone]) -> Callable[..., Backbone]:
        _REGISTRY[name] = BackboneEntry(name, factory, description)
        return factory

    return wrap


def list_backbones() -> list[BackboneEntry]:
    return sorted(_REGISTRY.values(), key=lambda e: e.name)


def load_backbone(name: str | nn.Module, **options) -> Backbone:
    """A frozen backbone with taps, on the auto-detected device and precision (overridable)."""
    if isinstance(name, nn.Module):
        if "taps" in options or not hasattr(name, "config"):
            return hooked_backbone(name, **options)
        return hf_backbone(name, **options)
    if name in _REGISTRY:
        return _REGISTRY[name].factory(**options)
    if name.startswith("hf:"):
        return hf_backbone(name[3:], **options)
    if os.path.isdir(name) or (name.count("/") == 1 and not name.startswith((".", "/"))):
        return hf_backbone(name, **options)
    raise UnknownNameError(
        "backbone",
        name,
        [e.name for e in list_backbones()],
        hint="Or give a local Hugging Face model folder, hf:<hub id>, or an nn.Module",
    )
