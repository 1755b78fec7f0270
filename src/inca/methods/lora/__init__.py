"""LoRA: low-rank adapters (``peft``) on the attention projections of a frozen copy train.
Registers the method ``lora``."""

from inca.methods.lora.config import LoraConfig
from inca.methods.lora.method import LoraMethod
from inca.methods.registry import Method, register_method

register_method(Method(
    "lora", "LoRA: low-rank adapters on the attention projections (peft)",
    "pixels", LoraConfig, default_lrs=(3e-4, 1e-3), task_kind="finetuned",
    behaviour=LoraMethod(), memory_modes={"lora": {"method": "lora"}},
))  # fmt: skip

__all__ = ["LoraConfig"]
