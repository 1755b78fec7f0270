"""Open-InCA: class-incremental cross-attention adapters. Each class owns a query and an output
unit, so classes are removed and composed without touching the others (``classes``).
Registers the adapter kind and the method ``open-inca``."""

from inca.methods.open_inca.adapter import OpenInCAAdapter, OpenInCAConfig
from inca.methods.registry import Method, register_method

register_method(Method(
    "open-inca", "Open-InCA: a query and an output unit per class, classes added, removed and "
    "merged without retraining the others", "tokens", OpenInCAConfig,
    default_plan="open-inca taps=block.*[-4:] lr=1e-3,3e-3",
))  # fmt: skip

__all__ = ["OpenInCAAdapter", "OpenInCAConfig"]
