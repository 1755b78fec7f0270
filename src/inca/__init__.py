"""inca: adapt frozen pretrained models through their intermediate representations."""

from inca._version import __version__
from inca.backbones import Backbone, Preprocess, TapInfo, list_backbones, load_backbone
from inca.errors import IncaError
from inca.methods import get_method, list_methods
from inca.tasks import MultiTask, Task, load_task

__all__ = [
    "Backbone",
    "IncaError",
    "MultiTask",
    "Preprocess",
    "TapInfo",
    "Task",
    "__version__",
    "get_method",
    "list_methods",
    "list_backbones",
    "load_backbone",
    "load_task",
]
