"""Adapters that read one tap's tokens: a registry, one file per method."""

from inca.adapters import inca_xattn as _inca_xattn  # noqa: F401  (registers "inca")
from inca.adapters import linear_probe as _linear_probe  # noqa: F401  (registers "linear")
from inca.adapters.base import Adapter, AdapterConfig, normalize_tokens
from inca.adapters.inca_xattn import InCAAdapter, InCAConfig
from inca.adapters.linear_probe import LinearProbe, LinearProbeConfig
from inca.adapters.registry import adapter_config, adapter_kinds, build_adapter, register_adapter

__all__ = [
    "Adapter",
    "AdapterConfig",
    "InCAAdapter",
    "InCAConfig",
    "LinearProbe",
    "LinearProbeConfig",
    "adapter_config",
    "adapter_kinds",
    "build_adapter",
    "normalize_tokens",
    "register_adapter",
]
