"""Choosing among trained adapters: rank on validation, best single, top-k ensemble.

Selection only ever looks at validation numbers. Test accuracy is computed once, at the end,
for the chosen adapter and ensemble (and for every adapter, for the per-layer table), never to
choose anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from inca.errors import IncaError


def accuracy(probs: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy of (N, C) scores against (N,) labels."""
    if len(labels) == 0:
        raise IncaError("accuracy of an empty split is undefined; give the split some images")
    return (probs.argmax(-1) == labels).float().mean().item()


def rank(scores: Mapping[str, float]) -> list[str]:
    """Names from best to worst score; ties broken by name, so the order is reproducible."""
    return sorted(scores, key=lambda n: (-scores[n], n))


def ensemble_probs(probs: Mapping[str, Tensor], members: Sequence[str]) -> Tensor:
    """Mean of the members' class probabilities: (N, C)."""
    return torch.stack([probs[m] for m in members]).mean(0)


@dataclass
class EnsembleChoice:
    members: list[str]  # best first
    val_acc: float
    k_curve: list[dict[str, float]] = field(default_factory=list)  # validation acc for each k

    @property
    def k(self) -> int:
        return len(self.members)


def select_ensemble(
    val_probs: Mapping[str, Tensor], val_labels: Tensor, max_k: int = 10
) -> EnsembleChoice:
    """The top-k ensemble (k = 1..max_k, adapters ranked by validation accuracy) with the best
    validation accuracy; the smallest k wins a tie."""
    if not val_probs:
        raise IncaError("no adapters to select from")
    order = rank({n: accuracy(p, val_labels) for n, p in val_probs.items()})
    best: EnsembleChoice | None = None
    curve = []
    for k in range(1, min(max_k, len(order)) + 1):
        acc = accuracy(ensemble_probs(val_probs, order[:k]), val_labels)
        curve.append({"k": k, "val_acc": acc})
        if best is None or acc > best.val_acc:
            best = EnsembleChoice(order[:k], acc)
    assert best is not None
    best.k_curve = curve
    return best
