from __future__ import annotations

import pytest
import torch

from inca.errors import IncaError
from inca.select import (
    accuracy,
    choose_ensemble,
    ensemble_probs,
    rank,
    select_ensemble,
    select_greedy,
)


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


# --------------------------------------------------------------------------- weighted ensembles
def two_class(true_probs: list[float]) -> torch.Tensor:
    """(N, 2) probabilities whose class-0 column is ``true_probs`` (labels are all 0)."""
    p = torch.tensor(true_probs)
    return torch.stack([p, 1 - p], -1)


def test_weighted_ensemble_probs() -> None:
    a, b = one_hot([0, 1]), one_hot([2, 2])
    torch.testing.assert_close(
        ensemble_probs({"a": a, "b": b}, ["a", "b"], [3, 1]), 0.75 * a + b / 4
    )
    torch.testing.assert_close(ensemble_probs({"a": a, "b": b}, ["a", "b"], None), (a + b) / 2)
    for bad in ([1.0], [1.0, 0.0], [1.0, float("nan")]):
        with pytest.raises(IncaError):
            ensemble_probs({"a": a, "b": b}, ["a", "b"], bad)


def complementary() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Two near-copies of the best single adapter (right on 60%) and two mediocre ones (50%),
    each right, confidently, on the half the other gets wrong, hesitantly."""
    solo = [0.6] * 6 + [0.4] * 4
    left = [0.9] * 5 + [0.45] * 5
    right = [0.45] * 5 + [0.9] * 5
    probs = {"solo": two_class(solo), "solo-b": two_class(solo), "left": two_class(left)}
    probs["right"] = two_class(right)
    return probs, torch.zeros(10, dtype=torch.long)


def test_greedy_adds_a_complementary_member_top_k_misses() -> None:
    probs, labels = complementary()
    assert max(accuracy(p, labels) for p in probs.values()) == pytest.approx(0.6)
    top = select_ensemble(probs, labels, max_k=3)  # solo, solo-b, left: the same mistakes
    assert top.val_acc == pytest.approx(0.6) and "right" not in top.members
    greedy = select_greedy(probs, labels)
    assert greedy.method == "greedy" and greedy.val_acc == 1.0
    assert greedy.members == ["solo", "right"] and greedy.weights == [0.5, 0.5]
    assert [c["step"] for c in greedy.k_curve] == list(range(1, 26))
    assert greedy.k_curve[0]["val_acc"] == pytest.approx(0.6) and greedy.k_curve[0]["k"] == 1
    assert accuracy(greedy.probs(probs), labels) == greedy.val_acc
    # the two mediocre members alone also beat the best single one
    assert accuracy(ensemble_probs(probs, ["left", "right"]), labels) == 1.0
    # restricted to the two best candidates, greedy cannot find the complement
    assert select_greedy(probs, labels, candidates=2).val_acc == pytest.approx(0.6)


def test_greedy_with_replacement_weights_a_repeated_member() -> None:
    probs = {"a": two_class([0.9, 0.9, 0.9, 0.4]), "b": two_class([0.05, 0.9, 0.9, 0.9])}
    labels = torch.zeros(4, dtype=torch.long)
    assert select_ensemble(probs, labels).val_acc == 0.75  # a + b, uniform, still 3 of 4
    greedy = select_greedy(probs, labels, max_steps=5)
    assert greedy.members == ["a", "b"] and greedy.val_acc == 1.0  # a, a, b
    assert greedy.weights == pytest.approx([2 / 3, 1 / 3])
    assert greedy.k == 2 and [c["k"] for c in greedy.k_curve[:3]] == [1, 1, 2]
    assert greedy.weights[0] > 1 / greedy.k
    assert accuracy(ensemble_probs(probs, greedy.members, greedy.weights), labels) == 1.0


def test_greedy_ties_are_reproducible() -> None:
    labels = torch.tensor([0, 1])
    good = one_hot([0, 1])
    for order in (["x", "y"], ["y", "x"]):
        choice = select_greedy({n: good.clone() for n in order}, labels, max_steps=4)
        assert choice.members == ["x"] and choice.weights == [1.0]  # by name; fewest steps
        assert len(choice.k_curve) == 4
    # equal accuracy: the lower negative log-likelihood wins over the name
    probs = {"a": two_class([0.6, 0.6]), "b": two_class([0.9, 0.9])}
    assert select_greedy(probs, torch.zeros(2, dtype=torch.long), max_steps=1).members == ["b"]


def naive_score(probs: dict[str, torch.Tensor], labels: torch.Tensor, members: list[str]):
    """(-accuracy, NLL) of the uniform mean of ``members`` (repeats count): lower is better."""
    mean = torch.stack([probs[m] for m in members]).double().mean(0)
    nll = -mean[torch.arange(len(labels)), labels].log().mean().item()
    return (-accuracy(mean, labels), nll)


def naive_greedy(probs: dict[str, torch.Tensor], labels: torch.Tensor, steps: int) -> list[str]:
    """The definition, one candidate at a time: the reference for the batched version."""
    picks: list[str] = []
    for _ in range(steps):
        scores = {n: naive_score(probs, labels, [*picks, n]) for n in probs}
        picks.append(min(probs, key=lambda n: (*scores[n], n)))
    return picks


def test_greedy_matches_the_naive_definition() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (60,), generator=g)
    probs = {f"m{i}": torch.randn(60, 4, generator=g).mul(2).softmax(-1) for i in range(7)}
    picks = naive_greedy(probs, labels, 6)
    choice = select_greedy(probs, labels, max_steps=6)
    steps = len(choice.k_curve)
    best = max(range(steps), key=lambda i: (choice.k_curve[i]["val_acc"], -i))
    chosen = picks[: best + 1]
    assert choice.members == list(dict.fromkeys(chosen))
    assert choice.weights == pytest.approx([chosen.count(m) / len(chosen) for m in choice.members])
    for i, row in enumerate(choice.k_curve):
        assert row["val_acc"] == pytest.approx(
            accuracy(ensemble_probs(probs, picks[: i + 1]), labels)
        )


def test_choose_ensemble_takes_the_better_and_records_the_other() -> None:
    probs, labels = complementary()
    choice = choose_ensemble(probs, labels, max_k=3)
    assert choice.method == "greedy" and choice.val_acc == 1.0
    assert choice.alternatives == pytest.approx({"top-k": 0.6, "greedy": 1.0})
    # a tie goes to top-k, the simpler ensemble
    labels = torch.tensor([0, 1])
    tie = choose_ensemble({"x": one_hot([0, 1]), "y": one_hot([0, 0])}, labels)
    assert tie.method == "top-k" and tie.weights is None and tie.members == ["x"]
    assert tie.alternatives == {"top-k": 1.0, "greedy": 1.0}


def test_greedy_refuses_bad_inputs() -> None:
    with pytest.raises(IncaError, match="no adapters"):
        select_greedy({}, torch.tensor([0]))
    with pytest.raises(IncaError, match="max_steps"):
        select_greedy({"a": one_hot([0])}, torch.tensor([0]), max_steps=0)
    with pytest.raises(IncaError, match="candidates"):
        select_greedy({"a": one_hot([0])}, torch.tensor([0]), candidates=0)
    with pytest.raises(IncaError, match="empty split"):
        select_greedy({"a": torch.zeros(0, 3)}, torch.zeros(0, dtype=torch.long))
    with pytest.raises(IncaError, match="2 validation predictions but 3 labels"):
        select_greedy({"a": one_hot([0, 1])}, torch.tensor([0, 1, 2]))
