"""The schedule every method shares: the batch order of an epoch and the learning rate of a step."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0 at ``total_steps``."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """The shuffled order of epoch ``epoch``: the same for every source and method."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
