"""VQT's optional feature selection: group lasso on a linear classifier, then a refit.

VQT's head reads D·(1 + ΣQ_i) features (13·384 = 4,992 for DINOv2-S with one query per block),
many of them redundant. Following the VQT paper, a linear classifier is fitted with a group-lasso
penalty, one group per input feature (its weights across all classes), so whole features drop
out; the ``keep`` fraction with the largest group norms is kept and the head is refitted on them.

The fit is full-batch proximal gradient descent on the training features (cross-entropy step,
then group soft-thresholding); the refit is full-batch L-BFGS. Both run on features computed
once without augmentation, so they take seconds, not epochs (:func:`select_and_refit`, which
the training harness calls after a run through the method's behaviour, ``VQTMethod.refit``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from inca.errors import IncaError


def group_lasso_ranking(
    features: Tensor, labels: Tensor, num_classes: int, strength: float, steps: int = 300
) -> Tensor:
    """Feature indices, most useful first: by the norm of their weights across classes after a
    group-lasso-penalised fit. features (N, F) float32, labels (N,) int64."""
    n, dim = features.shape
    weight = torch.zeros(num_classes, dim)
    bias = torch.zeros(num_classes)
    # step size 1/L for the cross-entropy's gradient: L <= ||X||_2^2 / (2N) (softmax Hessian <= I/2)
    lipschitz = torch.linalg.matrix_norm(features, ord=2).item() ** 2 / (2 * n)
    lr = 1.0 / max(lipschitz, 1e-8)
    for _ in range(steps):
        weight.requires_grad_(True)
        bias.requires_grad_(True)
        loss = F.cross_entropy(features @ weight.T + bias, labels)
        gw, gb = torch.autograd.grad(loss, [weight, bias])
        with torch.no_grad():
            weight = weight - lr * gw
            bias = bias - lr * gb
            norms = weight.norm(dim=0, keepdim=True)  # (1, F): one group per feature
            weight = weight * (1 - lr * strength / norms.clamp_min(1e-12)).clamp_min(0)
    return weight.detach().norm(dim=0).argsort(descending=True)


def refit_head(features: Tensor, labels: Tensor, head: torch.nn.Linear, l2: float = 1e-4) -> None:
    """Fit ``head`` (in place) to the features by full-batch L-BFGS on cross-entropy + L2."""
    optimizer = torch.optim.LBFGS(head.parameters(), max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(head(features), labels) + l2 * head.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)


def select_features(
    features: Tensor, labels: Tensor, num_classes: int, keep: float, strength: float
) -> Tensor:
    """The ``keep`` fraction of features to keep, as sorted indices."""
    if not 0 < keep <= 1:
        raise IncaError(f"keep is a fraction in (0, 1], got {keep}")
    ranking = group_lasso_ranking(features, labels, num_classes, strength)
    k = max(1, math.ceil(keep * features.shape[1]))
    return ranking[:k].sort().values


def select_and_refit(model: Any, batches: Iterable[tuple[Tensor, Tensor]], num_classes: int) -> int:
    """Group-lasso feature selection and head refit of a trained ``VQTModel``, in place, on
    the features of the training set's unaugmented (pixels, labels) ``batches``; returns how
    many features it kept."""
    config, backbone = model.config, model.backbone
    model.eval()
    features, labels = [], []
    for pixels, y in batches:
        with torch.no_grad(), backbone.precision.mixed():
            features.append(model.features(pixels.to(backbone.device)).float().cpu())
        labels.append(y)
    features, train_labels = torch.cat(features), torch.cat(labels)
    keep = select_features(
        features, train_labels, num_classes, config.lasso_keep, config.lasso_strength
    )
    model.set_selection(keep)
    head = torch.nn.Linear(len(keep), num_classes)
    refit_head(features[:, keep], train_labels, head)
    model.head.load_state_dict(head.state_dict())
    return len(keep)
