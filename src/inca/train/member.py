"""A trained member of a run, however it was trained: what selection, tasks and reports need."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from inca.adapters import Adapter
from inca.train.plan import AdapterSpec


@dataclass
class Member:
    """One trained adapter at its best: SGD-trained in the bank, or fitted by a solver."""

    spec: AdapterSpec
    adapter: Adapter  # standalone, CPU
    val_acc: float
    val_probs: Tensor  # (N_val, C), rows in the split's order
    test_probs: Tensor  # (N_test, C)
    info: dict[str, Any] = field(default_factory=dict)  # best epoch, fitted l2, ...
