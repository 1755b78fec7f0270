"""What every adapter on a frozen tap is built from: the base class and config, the kind
registry, stacking G adapters into one batched module, shared pooling and multi-tap groups.
The adapter kinds themselves live with their methods (``inca.methods.inca``,
``inca.methods.linear``) and register here when imported."""

from inca.adapters.base import Adapter, AdapterConfig, normalize_tokens
from inca.adapters.registry import adapter_config, adapter_kinds, build_adapter, register_adapter

__all__ = [
    "Adapter",
    "AdapterConfig",
    "adapter_config",
    "adapter_kinds",
    "build_adapter",
    "normalize_tokens",
    "register_adapter",
]
