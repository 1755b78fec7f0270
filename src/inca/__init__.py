"""inca: adapt frozen pretrained models through their intermediate representations."""

from inca._version import __version__
from inca.backbones import Backbone, Preprocess, TapInfo, list_backbones, load_backbone
from inca.errors import IncaError

__all__ = [
    "Backbone",
    "IncaError",
    "Preprocess",
    "TapInfo",
    "__version__",
    "list_backbones",
    "load_backbone",
]
