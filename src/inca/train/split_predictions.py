"""Every member's class probabilities on a split, in the split's order: what validation,
selection and testing read."""

from __future__ import annotations

import torch
from torch import Tensor
from tqdm.auto import tqdm

from inca.train.protocols import BatchSource, Members


@torch.no_grad()
def predict_all(
    source: BatchSource,
    members: Members,
    split: str,
    device: torch.device,
    progress: bool = True,
    total: int | None = None,
) -> tuple[dict[str, Tensor], Tensor]:
    """Every member's class probabilities on ``split``: ({name: (N, C)}, labels (N,))."""
    members.eval()
    probs: dict[str, list[Tensor]] = {n: [] for n in members.names}
    labels = []
    bar = tqdm(source.evaluate(split), desc=split, unit="batch", total=total, leave=False,
               disable=not progress, dynamic_ncols=True)  # fmt: skip
    for x, y in bar:
        for n, lg in members.forward_batch(x.to(device)).items():
            probs[n].append(lg.float().softmax(-1).cpu())
        labels.append(y)
    return {n: torch.cat(p) for n, p in probs.items()}, torch.cat(labels)
