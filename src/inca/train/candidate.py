"""A candidate for selection: a trained member of a run at its best epoch, however it was
trained (SGD in the bank, or a solver), with what selection, tasks and reports need. (The
``Members`` protocol is the set a Trainer trains; a candidate is what one of them became.)"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from inca.adapters import Adapter
from inca.train.plan import AdapterSpec


@dataclass
class Candidate:
    """One trained adapter at its best: SGD-trained in the bank, or fitted by a solver."""

    spec: AdapterSpec
    adapter: Adapter  # standalone, CPU
    val_acc: float
    val_probs: Tensor  # (N_val, C), rows in the split's order
    test_probs: Tensor  # (N_test, C)
    info: dict[str, Any] = field(default_factory=dict)  # best epoch, fitted l2, ...
    # with test-time views: {"val": (N_val, C), "test": (N_test, C)} of the images as they are
    # (view 0 alone), to report what the views buy
    one_view: dict[str, Tensor] | None = None
