"""One-to-many VQT: a learning-rate sweep of VQT trained from ONE pass of the frozen backbone.

A VQT sweep run the plain way repeats the backbone's forward for every learning rate, and that
forward is nearly all of VQT's cost. It need not be repeated: the backbone's tokens never depend
on the queries, and query rows never attend to each other (keys and values are the backbone's
tokens only), so the queries of every member of the sweep can ride in one call of each block and
each member's rows see exactly what they would see alone. Each member keeps its own queries,
head and optimizer group (its own learning rate). The loss is the sum of the members' losses;
their parameters are disjoint, so each member's gradient is the one its own run would get, and
the sweep costs one backbone pass plus G·Q query rows per block instead of G backbone passes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

from inca.backbones.base import Backbone
from inca.errors import IncaError
from inca.methods.vqt.config import VQTConfig
from inca.methods.vqt.model import VQTModel


def shares_pass(config: VQTConfig, lrs: list[float]) -> bool:
    """Whether ``config`` at ``lrs`` trains as one sweep: the memory-efficient path with two
    or more rates (the naive path is kept for measuring, one run per rate)."""
    return not config.vqt_naive and len(lrs) > 1


class VQTSweep(nn.Module):
    """G VQT models differing only in learning rate, sharing each step's backbone pass.

    ``forward`` returns (G, B, C) logits, one slice per member; ``members[g]`` is a plain
    ``VQTModel`` that saves, reloads and serves on its own."""

    def __init__(
        self, backbone: Backbone, num_classes: int, configs: list[VQTConfig], seed: int
    ) -> None:
        super().__init__()
        first = configs[0]
        if any(dataclasses.replace(c, lr=first.lr) != first for c in configs) or not (
            isinstance(first, VQTConfig) and shares_pass(first, [c.lr for c in configs])
        ):
            raise IncaError(
                "a one-pass VQT sweep needs two or more VQT configs (memory-efficient path) "
                "that differ only in lr"
            )
        members = []
        for config in configs:
            torch.manual_seed(seed)  # each member starts where its own run would
            members.append(VQTModel(backbone, num_classes, config))
        self.members = nn.ModuleList(members)

    def forward(self, pixels: Tensor) -> Tensor:
        """pixels (B, 3, S, S) -> logits (G, B, C)."""
        lead: VQTModel = self.members[0]
        pixels = lead.backbone_pixels(pixels)
        final, kv = lead.keys_values(pixels)
        batch, counts = len(pixels), [lead.counts[i] for i in lead.used]
        rows = [  # block j: every member's queries side by side, (B, G * Q_j, D)
            torch.cat([m._queries(i, batch) for m in self.members], dim=1) for i in lead.used
        ]
        outputs = lead.query_outputs(kv, rows)
        logits = []
        for g, member in enumerate(self.members):
            own = [out[:, g * q : (g + 1) * q] for out, q in zip(outputs, counts, strict=True)]
            logits.append(member.head(member.head_input(final, own)[:, member.selected]))
        return torch.stack(logits)

    def param_groups(self) -> list[dict[str, Any]]:
        return [group for m in self.members for group in m.param_groups()]
