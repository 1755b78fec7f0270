"""VQT: learned query tokens summarise every block of the frozen backbone; a head reads them.
Registers the method ``vqt``."""

from inca.methods.registry import Method, register_method
from inca.methods.vqt.config import VQTConfig
from inca.methods.vqt.method import VQTMethod

register_method(Method(
    "vqt", "VQT: learned query tokens summarise every block of the frozen backbone",
    "pixels", VQTConfig, default_lrs=(1e-3, 1e-2), task_kind="finetuned",
    behaviour=VQTMethod(), shares_sweep=True,
    memory_modes={"vqt": {"method": "vqt"}, "vqt-naive": {"method": "vqt", "vqt_naive": True}},
))  # fmt: skip

__all__ = ["VQTConfig"]
