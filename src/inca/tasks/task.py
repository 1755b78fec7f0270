"""A `Task`: the trained result of one job, ready to predict.

A task is one or more adapters (its *members*) reading taps of one frozen backbone; it predicts
the mean of the members' softmax probabilities (one member: a single adapter; several: an
ensemble, as ``inca.select`` chose them), weighted when greedy selection chose the ensemble (a
member it added twice counts twice). It remembers which backbone it was trained on (name,
weights hash, preprocessing) so that serving can refuse a backbone that would give other tokens.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from inca.adapters import Adapter, normalize_tokens
from inca.adapters.tap_groups import group_tokens, group_width, is_group, single_taps
from inca.backbones.base import Backbone
from inca.errors import IncaError
from inca.io import now_iso

Member = tuple[str, str, Adapter]  # (member name, tap or tap group "block.5+block.8", adapter)


_EMPTY = nn.ModuleDict()  # what a ModuleDict key must not shadow


def module_key(name: str) -> str:
    """An ``nn.ModuleDict`` key for member ``name``, one-to-one.

    ModuleDict keys may not contain "." (member names do: "block.3/inca") nor shadow its
    attributes ("keys", "training"). So "%" and "." are percent-escaped, and a clash gets a
    leading "%": escaped names have "%" only before "25" or "2E", so keys stay distinct.
    """
    key = name.replace("%", "%25").replace(".", "%2E")
    return "%" + key if hasattr(_EMPTY, key) else key


def backbone_info(backbone: Backbone) -> dict[str, Any]:
    """What a task records about its backbone: enough to reload it and to check it is the same."""
    return backbone.identity()


Weights = Sequence[float] | Mapping[str, float]


def normalize_weights(
    task: str, members: Sequence[str], weights: Weights | None
) -> dict[str, float] | None:
    """``weights`` checked and scaled to sum 1, keyed by member; None stays None (uniform).

    ``weights`` is one number per member, in member order, or a mapping {member: weight} naming
    every member (what ``Task.member_weights`` is, so one task's weights can build another).
    Bad weights are refused rather than guessed: a wrong weight silently changes every
    prediction.
    """
    if weights is None:
        return None
    if isinstance(weights, Mapping):
        if set(weights) != set(members):
            raise IncaError(
                f"task {task!r}: the weights name {sorted(weights)} but the members are "
                f"{list(members)}; give one weight per member"
            )
        weights = [weights[m] for m in members]
    try:
        if isinstance(weights, str | bytes):
            raise TypeError
        values = list(weights)
    except TypeError:
        raise IncaError(
            f"task {task!r}: weights must be numbers, one per member, not {weights!r}"
        ) from None
    if len(values) != len(members):
        raise IncaError(
            f"task {task!r} has {len(members)} members but {len(values)} weights; give one "
            "weight per member, in member order"
        )
    out = {}
    for member, w in zip(members, values, strict=True):
        try:
            value = float(w) if not isinstance(w, bool | str | bytes) else math.nan
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value) or value <= 0:
            raise IncaError(
                f"task {task!r}, member {member!r}: weight {w!r} is not a finite number > 0"
            )
        out[member] = value
    total = math.fsum(out.values())
    return {m: w / total for m, w in out.items()}


class Task(nn.Module):
    """Adapters on taps of one backbone; ``forward`` gives the (weighted) mean of their
    probabilities.

    Args:
        name: how the task is called in predictions and on disk.
        method: how it was made ("inca", "linear", "ensemble", ...): informative only.
        backbone_info: ``{"name", "weights_hash", "preprocess", "num_prefix_tokens"}``.
        class_names: one per output of every member, in output order.
        members: ``(member name, tap, adapter)``; the task holds these modules, not copies.
        metrics, data: free-form JSON-able records (accuracies, dataset and split).
        created: ISO time of creation (now when not given).
        weights: one finite weight > 0 per member, in member order, or {member: weight} (e.g.
            greedy selection's multiplicities); scaled to sum 1 and kept as ``member_weights``
            {member: weight}. None (the default): a uniform mean, ``member_weights`` None.
    """

    def __init__(
        self,
        name: str,
        method: str,
        backbone_info: Mapping[str, Any],
        class_names: Sequence[str],
        members: Sequence[Member],
        metrics: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
        created: str | None = None,
        weights: Weights | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(name, str) or not name:
            raise IncaError(f"a task needs a non-empty name, got {name!r}")
        if not members:
            raise IncaError(f"task {name!r} has no members; give it at least one adapter")
        self.name, self.method = name, method
        self.backbone_info = dict(backbone_info)
        self.class_names = [str(c) for c in class_names]
        self.metrics, self.data = dict(metrics or {}), dict(data or {})
        self.created = created or now_iso()
        self.members = nn.ModuleDict()
        self.member_taps: dict[str, str] = {}
        self._keys: dict[str, str] = {}  # member name -> ModuleDict key
        for member, tap, adapter in members:
            self._add(member, tap, adapter)
        self.member_weights = normalize_weights(name, self.member_names, weights)

    def _add(self, member: str, tap: str, adapter: Adapter) -> None:
        where = f"task {self.name!r}, member {member!r}"
        if not isinstance(member, str) or not member:
            raise IncaError(f"task {self.name!r}: member names must be non-empty strings")
        if member in self._keys:
            raise IncaError(f"{where} appears twice; give every member its own name")
        if not isinstance(adapter, Adapter):
            raise IncaError(f"{where} is a {type(adapter).__name__}, not an inca Adapter")
        if adapter.num_classes != len(self.class_names):
            raise IncaError(
                f"{where} predicts {adapter.num_classes} classes but the task has "
                f"{len(self.class_names)} class names; give one name per class"
            )
        self._keys[member] = module_key(member)
        self.members[self._keys[member]] = adapter
        self.member_taps[member] = tap

    @classmethod
    def from_adapters(
        cls,
        name: str,
        method: str,
        backbone: Backbone,
        class_names: Sequence[str],
        members: Sequence[Member],
        metrics: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
        weights: Weights | None = None,
    ) -> Task:
        """A task from adapters trained on ``backbone``; checks each tap exists and fits.
        ``weights``: as for ``Task`` (one per member; None for a uniform mean)."""
        widths = {t: info.dim for t, info in backbone.taps.items()}
        for member, tap, adapter in members:
            if is_group(tap):
                if not adapter.config.multi_tap:
                    raise IncaError(
                        f"task {name!r}, member {member!r}: a {adapter.config.kind} adapter reads "
                        f"one tap, not the group {tap!r}"
                    )
                dim = group_width(tap, widths, f"task {name!r}, member {member!r}: ")
            else:
                if tap not in widths:
                    backbone.validate_taps([tap])  # raises UnknownNameError listing the taps
                dim = widths[tap]
            if adapter.in_dim != dim:
                raise IncaError(
                    f"task {name!r}, member {member!r}: the adapter reads width {adapter.in_dim} "
                    f"but tap {tap!r} of {backbone.name} has width {dim}; build it with "
                    f"in_dim={dim}"
                )
        info = backbone_info(backbone)
        return cls(name, method, info, class_names, members, metrics, data, weights=weights)

    # ----------------------------------------------------------------- what it holds
    @property
    def member_names(self) -> list[str]:
        return list(self.member_taps)

    def member(self, name: str) -> Adapter:
        """The adapter of member ``name`` (its real name, dots and all)."""
        if name not in self._keys:
            raise IncaError(
                f"task {self.name!r} has no member {name!r}; it has {self.member_names}"
            )
        return self.members[self._keys[name]]  # type: ignore[return-value]

    @property
    def taps(self) -> list[str]:
        """The single taps the members read (a group's each), each once, in the order members
        first use them: what the backbone must give."""
        return single_taps(self.member_taps.values())

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, method={self.method!r}, classes={self.num_classes}"

    # ----------------------------------------------------------------- predicting
    def forward(self, tokens: Mapping[str, Tensor]) -> Tensor:
        """Raw tokens {tap: (B, T, D)} -> class probabilities (B, C); each tap normalised once."""
        missing = [t for t in self.taps if t not in tokens]
        if missing:
            raise IncaError(
                f"task {self.name!r} needs taps {missing}; pass backbone.forward_taps(pixels, "
                "task.taps)"
            )
        return self.forward_normalized({t: normalize_tokens(tokens[t]) for t in self.taps})

    def forward_normalized(self, normed: Mapping[str, Tensor]) -> Tensor:
        """Normalised tokens {tap: x̂ (B, T, D) float32} -> mean member probabilities (B, C),
        weighted by ``member_weights`` when the task has them.

        Takes x̂ rather than raw tokens so that a caller serving several tasks normalises each
        tap once for all of them (``MultiTask``).
        """
        probs = [
            self.members[self._keys[m]](group_tokens(normed, tap)).float().softmax(-1)  # (B, C)
            for m, tap in self.member_taps.items()
        ]
        if len(probs) == 1:
            return probs[0]
        stacked = torch.stack(probs)  # (M, B, C)
        if self.member_weights is None:
            return stacked.mean(0)
        w = torch.tensor(list(self.member_weights.values()), device=stacked.device)  # (M,)
        return torch.einsum("m,mbc->bc", w, stacked)

    # ----------------------------------------------------------------- on disk
    def save(self, path: str | Path) -> Path:
        """Write the task directory ``path`` atomically (see ``inca.tasks.storage``)."""
        from inca.tasks.storage import save_task

        return save_task(self, path)
