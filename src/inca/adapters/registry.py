"""Adapters by kind: ``build_adapter("inca", in_dim=384, num_classes=10, heads=6)``.

Adding a method is one new file with a config dataclass and a module, and one
``@register_adapter(ConfigClass)`` line (peft's register_peft_method habit).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from inca.adapters.base import Adapter, AdapterConfig
from inca.errors import UnknownNameError

_ADAPTERS: dict[str, tuple[type[AdapterConfig], type[Adapter]]] = {}


def register_adapter(config_cls: type[AdapterConfig]) -> Callable[[type[Adapter]], type[Adapter]]:
    def wrap(module_cls: type[Adapter]) -> type[Adapter]:
        _ADAPTERS[config_cls.kind] = (config_cls, module_cls)
        return module_cls

    return wrap


def adapter_kinds() -> list[str]:
    return sorted(_ADAPTERS)


def adapter_config(kind: str, options: dict[str, Any] | None = None) -> AdapterConfig:
    """The validated config of adapter ``kind`` with ``options`` (unknown options: an error)."""
    if kind not in _ADAPTERS:
        raise UnknownNameError("adapter kind", kind, _ADAPTERS)
    return _ADAPTERS[kind][0].from_dict(options or {})


def build_adapter(
    config: AdapterConfig, in_dim: int, num_classes: int, num_prefix_tokens: int = 1
) -> Adapter:
    """The module for ``config`` reading tokens of width ``in_dim``."""
    _, module_cls = _ADAPTERS[config.kind]
    return module_cls(
        config, in_dim=in_dim, num_classes=num_classes, num_prefix_tokens=num_prefix_tokens
    )
