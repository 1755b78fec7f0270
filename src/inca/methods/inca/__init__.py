"""InCA: cross-attention adapters with learned queries read a frozen tap's tokens; a grid of
them trains one-to-many from one backbone pass or the activation cache. Registers the adapter
kind and the method ``inca``."""

from inca.methods.inca.adapter import InCAAdapter, InCAConfig
from inca.methods.linear import LINEAR_PLAN
from inca.methods.registry import Method, register_method

# The main job's grid: InCA on every other block (the cache then holds six taps, not twelve),
# two learning rates x two weight decays x heads = width/64 and width/32, divisors of each
# tap's width (6 and 12 on DINOv2-S, 16 and 32 on ViT-L; 48 adapters on a 12-block backbone,
# halved after two epochs), and a converged linear probe on each of those blocks.
INCA_GRID = "inca taps=block.*[1::2] lr=1e-3,3e-3 wd=1e-4,0.05 heads=D/64,D/32"
DEFAULT_PLAN = f"{INCA_GRID}; {LINEAR_PLAN}"

register_method(Method(
    "inca", "InCA: cross-attention adapters on frozen taps, a grid trained one-to-many",
    "tokens", InCAConfig, default_plan=DEFAULT_PLAN,
))  # fmt: skip

__all__ = ["DEFAULT_PLAN", "INCA_GRID", "InCAAdapter", "InCAConfig"]
