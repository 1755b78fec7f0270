"""Linear probes on a frozen tap's pooled tokens (CLS, mean or both), fitted by full-batch
L-BFGS from the activation cache or trained with the grid. Registers the adapter kind and the
method ``linear``."""

from inca.methods.linear.probe import LinearProbe, LinearProbeConfig, pool_tokens, select_pool
from inca.methods.registry import Method, register_method

# The main job's reference probes, and so the comparison's linear row: a converged probe on the
# CLS token and mean token of every other block (the taps the main job caches), the best on
# validation reported. One plan for both, so the two tell the same story to the digit.
LINEAR_PLAN = "linear taps=block.*[1::2] pool=cls+mean solver=lbfgs"

register_method(Method(
    "linear", "linear probes on frozen taps, fitted by L-BFGS (the main job's reference probes)",
    "tokens", LinearProbeConfig, default_plan=LINEAR_PLAN,
))  # fmt: skip

__all__ = ["LINEAR_PLAN", "LinearProbe", "LinearProbeConfig", "pool_tokens", "select_pool"]
