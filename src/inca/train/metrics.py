"""Classification metrics from predicted scores: accuracy, balanced accuracy, per-class recall
and the confusion matrix, and the one switch (``--metric``) that says which ranks members.

Accuracy alone misleads on imbalanced data: on a folder that is 69% one class, a model that
always answers that class scores 69%. Balanced accuracy (the mean of the per-class recalls,
scikit-learn's ``balanced_accuracy_score``) scores it 1/K, which makes the failure plain.
Classes absent from the labels are left out of the mean, as scikit-learn does.
"""

from __future__ import annotations

import torch
from torch import Tensor

from inca.errors import IncaError, UnknownNameError

METRICS = ("accuracy", "balanced-accuracy")
DEFAULT_METRIC = "accuracy"


def check_metric(metric: str) -> str:
    """``metric`` if it is one of :data:`METRICS`, else a clear error."""
    if metric not in METRICS:
        raise UnknownNameError("metric", metric, METRICS)
    return metric


def _predictions(scores: Tensor, labels: Tensor) -> Tensor:
    if len(labels) == 0:
        raise IncaError("a metric of an empty split is undefined; give the split some images")
    if scores.ndim != 2 or scores.shape[0] != len(labels):
        raise IncaError(
            f"scores must be (N, C) for {len(labels)} labels, got shape {tuple(scores.shape)}"
        )
    return scores.argmax(-1)


def confusion_matrix(scores: Tensor, labels: Tensor, num_classes: int | None = None) -> Tensor:
    """(K, K) int64 counts: row = true class, column = predicted class (scikit-learn's layout).
    ``scores`` (N, C); K = ``num_classes`` or C."""
    predicted = _predictions(scores, labels).cpu()  # (N,)
    k = num_classes or scores.shape[1]
    flat = labels.cpu().long() * k + predicted
    return torch.bincount(flat, minlength=k * k).reshape(k, k)


def per_class_recall(scores: Tensor, labels: Tensor, num_classes: int | None = None) -> Tensor:
    """(K,) float: the share of each class's images predicted as that class; NaN for a class
    with no image in ``labels``."""
    cm = confusion_matrix(scores, labels, num_classes).double()
    support = cm.sum(1)  # (K,)
    return torch.where(support > 0, cm.diagonal() / support.clamp_min(1), torch.nan)


def balanced_accuracy(scores: Tensor, labels: Tensor) -> float:
    """Mean recall over the classes present in ``labels``."""
    recall = per_class_recall(scores, labels)
    return recall[~recall.isnan()].mean().item()


def accuracy(scores: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy of (N, C) scores against (N,) labels."""
    return (_predictions(scores, labels) == labels).float().mean().item()


def score(metric: str, scores: Tensor, labels: Tensor) -> float:
    """The value of ``metric`` ("accuracy" or "balanced-accuracy"); higher is better."""
    if check_metric(metric) == "balanced-accuracy":
        return balanced_accuracy(scores, labels)
    return accuracy(scores, labels)


def metrics_summary(scores: Tensor, labels: Tensor, class_names: list[str]) -> dict:
    """What a report shows of one model on one split: accuracy, balanced accuracy, recall per
    class (by name; None where the class has no image), images per class (``support``, by name)
    and the confusion matrix (row = true class, column = predicted, in ``class_names`` order)."""
    cm = confusion_matrix(scores, labels, len(class_names))  # (K, K)
    recall = per_class_recall(scores, labels, len(class_names))
    return {
        "accuracy": accuracy(scores, labels),
        "balanced_accuracy": balanced_accuracy(scores, labels),
        "recall": {
            n: (None if r != r else float(r))
            for n, r in zip(class_names, recall.tolist(), strict=True)
        },
        "support": dict(zip(class_names, cm.sum(1).tolist(), strict=True)),
        "confusion": cm.tolist(),
    }
