"""Linear probes on a frozen tap's pooled tokens (CLS, mean or both), fitted by full-batch
L-BFGS from the activation cache or trained with the grid. Registers the adapter kind and the
method ``linear``."""

from inca.methods.linear.probe import LinearProbe, LinearProbeConfig, pool_tokens, select_pool
from inca.methods.registry import Method, register_method

register_method(Method(
    "linear", "linear probes on frozen taps, fitted by L-BFGS (every block and pooling)",
    "tokens", LinearProbeConfig,
    default_plan="linear taps=block.* pool=cls,mean,cls+mean solver=lbfgs",
))  # fmt: skip

__all__ = ["LinearProbe", "LinearProbeConfig", "pool_tokens", "select_pool"]
