"""New classes for a trained Open-InCA adapter, as the Trainer's members.

The base adapter is frozen: its projections, and every old class's query and output unit.
Each member (one per learning rate: one-to-many) owns only the new classes' rows, and with
``new_set`` a projection set of their own (the default of ``inca classes add``: projections
trained on the first two classes read later ones poorly). Its logits are the base's logits for
the old classes, computed once per batch without gradient, then the new classes': the loss over
all seen classes lets the new classes compete with the old ones (on replayed old images, or
pseudo old-class samples from the stored class means), and nothing the old classes own can
change. ``class_weights`` balance that loss: old classes have far fewer samples than new ones.
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
                 weight_decay: float, seed: int = 0, new_set: bool = True,
                 class_weights: Tensor | None = None) -> None:  # fmt: skip
        super().__init__()
        self.base = base.eval().requires_grad_(False)
        self.taps, self.count, self.weight_decay = [tap], count, weight_decay
        self.new_set = new_set
        self.class_weights = class_weights  # (old + new,) for the Trainer's loss, or None
        self._names = [f"lr{lr:g}" for lr in lrs]
        self.lrs = dict(zip(self._names, lrs, strict=True))
        # the same initial rows (and set) for every rate
        fresh = with_new_classes(base, count, seed, new_set)
        owned = ROWS + (SET_PARAMS if new_set else ())
        last = slice(-1, None)
        self._rows = nn.ModuleList(
            nn.ParameterDict(
                {
                    k: nn.Parameter(
                        getattr(fresh, k)[last if k in SET_PARAMS else slice(-count, None)]
                        .detach()
                        .clone()
                    )
                    for k in owned
                }
            )
            for _ in self._names
        )  # fmt: skip (a list: module names cannot hold the dots of "lr0.001")
        self.rows = dict(zip(self._names, self._rows, strict=True))
        self.template = OpenInCAAdapter(OpenInCAConfig(heads=base.heads), base.in_dim, count,
                                        base.num_prefix_tokens)  # fmt: skip

    @property
    def names(self) -> list[str]:
        return list(self._names)

    def forward_batch(self, x: Tensor) -> dict[str, Tensor]:
        """x: normalised tokens of the tap, (1, B, T, D) -> {member: logits (B, old + new)}."""
        tokens = x[0].float()
        with torch.no_grad():
            old = self.base(tokens)  # (B, C_old), calibrated as the task serves them
        n = len(self._names)
        if self.new_set:  # each member's own set
            params = {k: torch.stack([self.rows[m][k] for m in self._names]) for k in SET_PARAMS}
        else:  # the base's first set, frozen
            params = {k: getattr(self.base, k)[:1].unsqueeze(0).expand(n, 1, *getattr(
                self.base, k).shape[1:]) for k in SET_PARAMS}  # fmt: skip
        params |= {k: torch.stack([self.rows[m][k] for m in self._names]) for k in ROWS}
        new = self.template.stacked_forward(params, tokens.unsqueeze(0).expand(n, *tokens.shape))
        return {m: torch.cat([old, new[i]], -1) for i, m in enumerate(self._names)}

    def param_groups(self) -> list[dict[str, Any]]:
        groups = []
        for m in self._names:
            lr, rows = self.lrs[m], self.rows[m]
            decayed = {"weight", "k_weight", "v_weight", "o_weight"}  # matrices, as in the bank
            groups += [
                {"params": [p for k, p in rows.items() if k in decayed], "lr": lr,
                 "base_lr": lr, "weight_decay": self.weight_decay},
                {"params": [p for k, p in rows.items() if k not in decayed], "lr": lr,
                 "base_lr": lr, "weight_decay": 0.0},
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
        """The base with member ``name``'s new classes (and set): old rows copied bit for bit."""
        adapter = with_new_classes(self.base, self.count, new_set=self.new_set)
        with torch.no_grad():
            for k, p in self.rows[name].items():
                rows = slice(-1, None) if k in SET_PARAMS else slice(-self.count, None)
                getattr(adapter, k)[rows] = p.detach().to(getattr(adapter, k).device)
        return adapter
