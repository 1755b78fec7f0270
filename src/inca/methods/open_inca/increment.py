"""New classes for a trained Open-InCA adapter, as the Trainer's members.

The base adapter is frozen: its projections, and every old class's query and output unit.
Each member (one per learning rate: one-to-many) owns only the new classes' rows. Its logits are
the base's logits for the old classes, computed once per batch without gradient, then the new
classes' through the base's first projection set: the loss over all seen classes lets the new
classes compete with the old ones (on replayed old images, when there are some), and nothing
the old classes own can change.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from inca.methods.open_inca.adapter import SET_PARAMS, OpenInCAAdapter, OpenInCAConfig
from inca.methods.open_inca.classes import with_new_classes

ROWS = ("queries", "weight", "bias")


class NewClasses(nn.Module):
    """Members ``lr<rate>`` adding ``count`` classes to ``base`` (read from tap ``tap``)."""

    def __init__(self, base: OpenInCAAdapter, tap: str, count: int, lrs: list[float],
                 weight_decay: float, seed: int = 0) -> None:  # fmt: skip
        super().__init__()
        self.base = base.eval().requires_grad_(False)
        self.taps, self.count, self.weight_decay = [tap], count, weight_decay
        self._names = [f"lr{lr:g}" for lr in lrs]
        self.lrs = dict(zip(self._names, lrs, strict=True))
        fresh = with_new_classes(base, count, seed)  # the same initial rows for every rate
        self._rows = nn.ModuleList(
            nn.ParameterDict(
                {k: nn.Parameter(getattr(fresh, k)[-count:].detach().clone()) for k in ROWS}
            )
            for _ in self._names
        )  # fmt: skip (a list: module names cannot hold the dots of "lr0.001")
        self.rows = dict(zip(self._names, self._rows, strict=True))
        config = OpenInCAConfig(heads=base.heads, projection_sets=base.config.projection_sets)
        self.template = OpenInCAAdapter(config, base.in_dim, count, base.num_prefix_tokens)

    @property
    def names(self) -> list[str]:
        return list(self._names)

    def forward_batch(self, x: Tensor) -> dict[str, Tensor]:
        """x: normalised tokens of the tap, (1, B, T, D) -> {member: logits (B, old + new)}."""
        tokens = x[0].float()
        with torch.no_grad():
            old = self.base(tokens)  # (B, C_old), calibrated as the task serves them
        n = len(self._names)
        params = {k: getattr(self.base, k).unsqueeze(0).expand(n, *getattr(self.base, k).shape)
                  for k in SET_PARAMS}  # fmt: skip
        params |= {k: torch.stack([self.rows[m][k] for m in self._names]) for k in ROWS}
        new = self.template.stacked_forward(params, tokens.unsqueeze(0).expand(n, *tokens.shape))
        return {m: torch.cat([old, new[i]], -1) for i, m in enumerate(self._names)}

    def param_groups(self) -> list[dict[str, Any]]:
        groups = []
        for m in self._names:
            lr, rows = self.lrs[m], self.rows[m]
            groups += [
                {"params": [rows["weight"]], "lr": lr, "base_lr": lr,
                 "weight_decay": self.weight_decay},
                {"params": [rows["queries"], rows["bias"]], "lr": lr, "base_lr": lr,
                 "weight_decay": 0.0},
            ]  # fmt: skip
        return groups

    def member_state(self, name: str) -> dict[str, Tensor]:
        return {k: p.detach().cpu().clone() for k, p in self.rows[name].items()}

    @torch.no_grad()
    def load_member_state(self, name: str, state: dict[str, Tensor]) -> None:
        for k, p in self.rows[name].items():
            p.copy_(state[k])

    def checkpoint_state(self) -> dict[str, Tensor]:
        return {f"{m}/{k}": p for m in self._names for k, p in self.rows[m].items()}

    @torch.no_grad()
    def load_checkpoint_state(self, state: dict[str, Tensor]) -> None:
        for m in self._names:
            for k, p in self.rows[m].items():
                p.copy_(state[f"{m}/{k}"])

    def grown(self, name: str) -> OpenInCAAdapter:
        """The base with member ``name``'s new classes: old rows copied bit for bit."""
        adapter = with_new_classes(self.base, self.count)
        with torch.no_grad():
            for k in ROWS:
                getattr(adapter, k)[-self.count :] = (
                    self.rows[name][k].detach().to(getattr(adapter, k).device)
                )
        return adapter
