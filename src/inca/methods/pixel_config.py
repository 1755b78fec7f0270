"""What every method trained from pixels shares: its config's base class, and the functions that
build, split and load those configs by method name (views of the method registry).

Full, partial (last k blocks), LoRA (through Hugging Face ``peft``) and StochCA train a copy of
the backbone plus a new linear head on [CLS, mean of the patch tokens] of the final normed
tokens (the features the linear probe reads); VQT keeps the backbone frozen and trains query
tokens per block and a head on them. Each lives in its own package (``inca.methods.full``...).

Configs are data: each holds only its own method's fields and checks them (a task.json of a
fully fine-tuned model does not store ``lora_r``). What a method does is its registered
behaviour object (``inca.methods.pixel_method``), so no code branches on a method's name.
Configs saved by older inca (one flat class of 17 fields for every method) still load:
:func:`config_from_dict` keeps the fields the method has.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

from torch import nn

from inca.errors import IncaError, UnknownNameError
from inca.methods.pixel_method import pixel_method
from inca.methods.registry import list_methods
from inca.utils.typed_fields import typed_values


@dataclass(frozen=True)
class FineTuneConfig:
    """What every method trained from pixels has. lr: its learning rate (the backbone's; VQT:
    queries and head); head_lr: the new head's; weight_decay: AdamW's, on matrices."""

    method: ClassVar[str] = ""
    lr: float = 5e-5
    head_lr: float = 1e-3
    weight_decay: float = 0.05

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.head_lr <= 0:
            raise IncaError("learning rates must be positive")
        if self.weight_decay < 0:
            raise IncaError(f"weight_decay must be >= 0, got {self.weight_decay}")

    changes_backbone: ClassVar[bool] = True  # its task cannot share a plain frozen pass

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method} | asdict(self)

    def shares_backbone_pass(self, lrs: list[float]) -> bool:
        """Whether runs at ``lrs`` train together from one backbone pass (a view of the
        method's behaviour, :meth:`PixelMethod.shares_pass`)."""
        return pixel_method(self).shares_pass(self, lrs)


def configs() -> dict[str, type[FineTuneConfig]]:
    """Every registered method trained from pixels, and its config class."""
    return {m.name: m.config for m in list_methods("pixels")}


def field_names(cls: type[FineTuneConfig]) -> list[str]:
    return [f.name for f in fields(cls)]


def finetune_config(method: str = "full", **options: Any) -> FineTuneConfig:
    """The config of ``method`` with ``options`` (its own fields only; others are an error)."""
    known = configs()
    if method not in known:
        raise UnknownNameError("fine-tuning method", method, known)
    cls = known[method]
    unknown = sorted(set(options) - set(field_names(cls)))
    if unknown:
        raise IncaError(
            f"{method}: unknown option(s) {unknown}; {method} takes {', '.join(field_names(cls))}"
        )
    return cls(**typed_values(cls, options, method))


def config_from_dict(data: dict[str, Any]) -> FineTuneConfig:
    """A saved config (task.json, checkpoint signature). Configs written before each method
    had its own class carry every method's fields: the method's own are kept."""
    data = dict(data)
    method = data.pop("method", "full")
    known = configs()
    if method not in known:
        raise UnknownNameError("fine-tuning method", method, known)
    own = set(field_names(known[method]))
    return finetune_config(method, **{k: v for k, v in data.items() if k in own})


def build_model(backbone: Any, num_classes: int, config: FineTuneConfig) -> nn.Module:
    """The trainable model of ``config``'s method on ``backbone``: a fine-tuned copy, or VQT's
    queries and head on the shared frozen backbone."""
    return pixel_method(config).build(backbone, num_classes, config)
