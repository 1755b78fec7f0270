"""StochCA: full fine-tuning whose blocks, at random, attend to the frozen model's keys and values.
Registers the method ``stochca``."""

from inca.methods.registry import Method, register_method
from inca.methods.stochca.config import StochCAConfig
from inca.methods.stochca.method import StochCAMethod

register_method(Method(
    "stochca", "StochCA: full fine-tuning whose blocks at random attend to the frozen model",
    "pixels", StochCAConfig, default_lrs=(2e-5, 5e-5), task_kind="finetuned",
    behaviour=StochCAMethod(),
    # its memory is measured at p = 1, every block cross-attending: its worst case
    memory_modes={"stochca": {"method": "stochca", "stochca_p": 1.0}},
))  # fmt: skip

__all__ = ["StochCAConfig"]
