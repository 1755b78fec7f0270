"""Partial fine-tuning: the last blocks (and the final norm) of a copy of the backbone train.
Registers the method ``partial``."""

from inca.methods.partial.config import PartialConfig
from inca.methods.partial.method import PartialMethod
from inca.methods.registry import Method, register_method

register_method(Method(
    "partial", "fine-tuning of the last blocks (and the final norm) only",
    "pixels", PartialConfig, default_lrs=(1e-4, 3e-4), task_kind="finetuned",
    behaviour=PartialMethod(),
))  # fmt: skip

__all__ = ["PartialConfig"]
