"""The classification metrics against scikit-learn's, on random, imbalanced and incomplete
labels (a class with no image)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn import metrics as sk

from inca.errors import IncaError, UnknownNameError
from inca.train.metrics import (
    METRICS,
    accuracy,
    balanced_accuracy,
    check_metric,
    confusion_matrix,
    metrics_summary,
    per_class_recall,
    score,
)


def case(name: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(scores (N, K), labels (N,), K): random scores, labels as the case says."""
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    k, n = 5, 200
    scores = torch.randn(n, k, generator=g)
    if name == "uniform":
        labels = torch.randint(0, k, (n,), generator=g)
    elif name == "imbalanced":  # 70% class 0, scores leaning towards it
        labels = torch.where(
            torch.rand(n, generator=g) < 0.7, 0, torch.randint(1, k, (n,), generator=g)
        )
        scores[:, 0] += 1.0
    elif name == "absent":  # class 2 has no image, and is still predicted sometimes
        labels = torch.tensor([0, 1, 3, 4])[torch.randint(0, 4, (n,), generator=g)]
        scores[:, 2] += 0.5
    else:  # "near": mostly right, so recalls are far from chance
        labels = torch.randint(0, k, (n,), generator=g)
        scores[torch.arange(n), labels] += 2.0
    return scores, labels, k


CASES = ["uniform", "imbalanced", "absent", "near"]


@pytest.mark.parametrize("name", CASES)
def test_metrics_match_sklearn(name: str) -> None:
    scores, labels, k = case(name)
    y, p = labels.numpy(), scores.argmax(-1).numpy()
    assert accuracy(scores, labels) == pytest.approx(sk.accuracy_score(y, p))
    with warnings.catch_warnings():  # sklearn warns of a predicted class absent from y_true
        warnings.simplefilter("ignore", UserWarning)
        expected_bal = sk.balanced_accuracy_score(y, p)
    assert balanced_accuracy(scores, labels) == pytest.approx(expected_bal, abs=1e-12)
    np.testing.assert_array_equal(
        confusion_matrix(scores, labels).numpy(), sk.confusion_matrix(y, p, labels=range(k))
    )
    recall = per_class_recall(scores, labels).numpy()
    present = np.isin(np.arange(k), y)
    expected = sk.recall_score(y, p, labels=range(k), average=None, zero_division=0)
    np.testing.assert_allclose(recall[present], expected[present], rtol=0, atol=1e-12)
    assert np.isnan(recall[~present]).all() and present.sum() == (4 if name == "absent" else k)


def test_balanced_accuracy_exposes_a_majority_guesser() -> None:
    labels = torch.tensor([0] * 69 + [1] * 21 + [2] * 10)
    always_0 = torch.nn.functional.one_hot(torch.zeros(100, dtype=torch.long), 3).float()
    assert accuracy(always_0, labels) == pytest.approx(0.69)
    assert balanced_accuracy(always_0, labels) == pytest.approx(1 / 3)
    assert per_class_recall(always_0, labels).tolist() == [1.0, 0.0, 0.0]
    assert score("accuracy", always_0, labels) == accuracy(always_0, labels)
    assert score("balanced-accuracy", always_0, labels) == balanced_accuracy(always_0, labels)


def test_confusion_matrix_layout_and_num_classes() -> None:
    scores = torch.nn.functional.one_hot(torch.tensor([1, 1, 0]), 2).float()
    labels = torch.tensor([0, 1, 0])
    assert confusion_matrix(scores, labels).tolist() == [[1, 1], [0, 1]]  # row: true class
    assert confusion_matrix(scores, labels, num_classes=3).tolist() == [
        [1, 1, 0],
        [0, 1, 0],
        [0, 0, 0],
    ]


def test_metrics_summary_names_classes_and_leaves_absent_ones_out() -> None:
    scores, labels, _ = case("absent")
    names = ["ant", "bee", "cat", "dog", "eel"]
    summary = metrics_summary(scores, labels, names)
    assert list(summary["recall"]) == names and summary["recall"]["cat"] is None
    assert summary["support"]["cat"] == 0 and sum(summary["support"].values()) == len(labels)
    assert summary["accuracy"] == accuracy(scores, labels)
    mean = sum(r for r in summary["recall"].values() if r is not None) / 4
    assert summary["balanced_accuracy"] == pytest.approx(mean)
    cm = summary["confusion"]
    assert len(cm) == 5 and all(len(row) == 5 for row in cm)
    assert [sum(row) for row in cm] == list(summary["support"].values())
    assert all(not math.isnan(r) for r in summary["recall"].values() if r is not None)


def test_metric_names_and_bad_inputs() -> None:
    assert METRICS == ("accuracy", "balanced-accuracy")
    assert check_metric("balanced-accuracy") == "balanced-accuracy"
    with pytest.raises(UnknownNameError, match="balanced-accuracy"):
        check_metric("f1")
    with pytest.raises(IncaError, match="empty split"):
        balanced_accuracy(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    with pytest.raises(IncaError, match=r"\(N, C\)"):
        accuracy(torch.zeros(4), torch.zeros(4, dtype=torch.long))
