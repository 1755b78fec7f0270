"""Frozen backbones read through named taps; see :func:`load_backbone`."""

from inca.backbones import zoo as _zoo  # noqa: F401  (registers the built-in backbones)
from inca.backbones.base import Backbone, TapInfo
from inca.backbones.hf import hf_backbone
from inca.backbones.hooks import hooked_backbone
from inca.backbones.preprocess_spec import Preprocess
from inca.backbones.registry import list_backbones, load_backbone, register_backbone

__all__ = [
    "Backbone",
    "Preprocess",
    "TapInfo",
    "hf_backbone",
    "hooked_backbone",
    "list_backbones",
    "load_backbone",
    "register_backbone",
]
