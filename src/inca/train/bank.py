"""The AdapterBank: every adapter of a plan, fed from one backbone pass, one summed loss.

Each tap's tokens are normalised once per batch and shared by all adapters reading that tap
(dinov2's ``AllClassifiers`` habit: compute features once, a dict of named heads). Each adapter
is initialised from its own seed (run seed + its name), so an adapter starts from the same
weights whether it is trained alone or beside sixty others.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from inca.adapters import Adapter, build_adapter, normalize_tokens
from inca.backbones.base import TapInfo
from inca.train.plan import AdapterSpec


def module_key(name: str) -> str:
    """nn.ModuleDict keys cannot hold dots."""
    return name.replace(".", "__")


def adapter_seed(seed: int, name: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


class AdapterBank(nn.Module):
    def __init__(
        self,
        specs: Sequence[AdapterSpec],
        taps: Mapping[str, TapInfo],
        num_classes: int,
        num_prefix_tokens: int,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.specs = {s.name: s for s in specs}
        self.adapters = nn.ModuleDict()
        for s in specs:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(adapter_seed(seed, s.name))
                self.adapters[module_key(s.name)] = build_adapter(
                    s.config, taps[s.tap].dim, num_classes, num_prefix_tokens
                )
        # taps in the order the backbone produces them
        self.taps = [t for t in taps if any(s.tap == t for s in specs)]

    @property
    def names(self) -> list[str]:
        return list(self.specs)

    def adapter(self, name: str) -> Adapter:
        return self.adapters[module_key(name)]

    def forward(self, tokens: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """{tap: (B, T, D)} -> {adapter name: logits (B, C)}; each tap normalised once."""
        normed = {t: normalize_tokens(tokens[t]) for t in self.taps}
        return {n: self.adapter(n)(normed[s.tap]) for n, s in self.specs.items()}

    def param_groups(self) -> list[dict]:
        """Two AdamW groups per adapter: matrices decay, vectors (norms, biases, queries) don't."""
        groups = []
        for name, spec in self.specs.items():
            decay, plain = [], []
            for pname, p in self.adapter(name).named_parameters():
                (decay if p.ndim >= 2 and pname != "queries" else plain).append(p)
            for params, wd in ((decay, spec.weight_decay), (plain, 0.0)):
                if params:
                    groups.append(
                        {
                            "params": params,
                            "lr": spec.lr,
                            "base_lr": spec.lr,
                            "weight_decay": wd,
                            "adapter": name,
                        }
                    )
        return groups

    def num_params(self, name: str) -> int:
        return self.adapter(name).num_params()


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0 at ``total_steps``."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
