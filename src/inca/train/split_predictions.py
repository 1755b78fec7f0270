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
    one_view: bool = False,
) -> tuple[dict[str, Tensor], Tensor]:
    """Every member's class probabilities on ``split``: ({name: (N, C)}, labels (N,)). A batch
    of V views of its b images (V * b rows, view-major: test-time views) gives each image the
    mean of its views' probabilities; ``one_view``: the images as they are, without the test
    views (what the views buy, for the report)."""
    members.eval()
    probs: dict[str, list[Tensor]] = {n: [] for n in members.names}
    labels = []
    batches = source.evaluate(split, one_view=True) if one_view else source.evaluate(split)
    bar = tqdm(batches, desc=split, unit="batch", total=total, leave=False,
               disable=not progress, dynamic_ncols=True)  # fmt: skip
    for x, y in bar:
        for n, lg in members.forward_batch(x.to(device)).items():
            p = lg.float().softmax(-1).cpu()  # (V * b, C)
            probs[n].append(p.reshape(-1, len(y), p.shape[-1]).mean(0))  # (b, C)
        labels.append(y)
    return {n: torch.cat(p) for n, p in probs.items()}, torch.cat(labels)
