"""Full fine-tuning: every weight of a copy of the backbone trains, with a new head.
Registers the method ``full``."""

from inca.methods.full.config import CopyConfig, FullConfig
from inca.methods.full.method import CopyMethod
from inca.methods.registry import Method, register_method

register_method(Method(
    "full", "full fine-tuning: every weight of a copy of the backbone, and a new head",
    "pixels", FullConfig, default_lrs=(2e-5, 5e-5), task_kind="finetuned",
    behaviour=CopyMethod(), memory_modes={"full": {"method": "full"}},
))  # fmt: skip

__all__ = ["CopyConfig", "CopyMethod", "FullConfig"]
