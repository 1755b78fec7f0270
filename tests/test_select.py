from __future__ import annotations

import pytest
import torch

from inca.errors import IncaError
from inca.select import accuracy, ensemble_probs, rank, select_ensemble


def one_hot(labels: list[int], c: int = 3) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(labels), c).float()


def test_rank_is_by_score_then_name() -> None:
    assert rank({"b": 0.5, "a": 0.5, "c": 0.9}) == ["c", "a", "b"]


def test_ensemble_beats_members_when_errors_differ() -> None:
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    # each adapter is right on 4 of 6, wrong on different images; soft votes fix them together
    a = one_hot([0, 1, 2, 0, 0, 0]) * 0.6 + 0.4 / 3  # wrong on images 4, 5
    b = one_hot([0, 1, 1, 1, 1, 2]) * 0.6 + 0.4 / 3  # wrong on 2, 3
    c = one_hot([2, 2, 2, 0, 1, 2]) * 0.6 + 0.4 / 3  # wrong on 0, 1
    probs = {"a": a, "b": b, "c": c}
    assert [accuracy(p, labels) for p in probs.values()] == pytest.approx([4 / 6, 4 / 6, 4 / 6])
    choice = select_ensemble(probs, labels, max_k=3)
    assert choice.k == 3 and choice.val_acc == 1.0
    assert [row["k"] for row in choice.k_curve] == [1, 2, 3]
    torch.testing.assert_close(ensemble_probs(probs, ["a", "b"]), (a + b) / 2)


def test_smallest_k_wins_ties() -> None:
    labels = torch.tensor([0, 1])
    good = one_hot([0, 1])
    choice = select_ensemble({"x": good, "y": good.clone()}, labels)
    assert choice.members == ["x"]


def test_empty_inputs_are_refused() -> None:
    with pytest.raises(IncaError):
        select_ensemble({}, torch.tensor([0]))
    with pytest.raises(IncaError):
        accuracy(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
