from __future__ import annotations

import pytest
import torch

from inca.errors import IncaError
from inca.train.metrics import balanced_accuracy
from inca.train.select import (
    accuracy,
    choose_ensemble,
    ensemble_probs,
    rank,
    score_all,
    scorer,
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


def naive_score(
    probs: dict[str, torch.Tensor], labels: torch.Tensor, members: list[str], metric: str
):
    """(-metric, NLL) of the uniform mean of ``members`` (repeats count): lower is better. The
    metric is rounded so that one value computed two ways ties with itself."""
    mean = torch.stack([probs[m] for m in members]).double().mean(0)
    nll = -mean[torch.arange(len(labels)), labels].log().mean().item()
    return (-round(scorer(metric)(mean, labels), 9), nll)


def naive_greedy(
    probs: dict[str, torch.Tensor], labels: torch.Tensor, steps: int, metric: str = "accuracy"
) -> list[str]:
    """The definition, one candidate at a time: the reference for the batched version."""
    picks: list[str] = []
    for _ in range(steps):
        scores = {n: naive_score(probs, labels, [*picks, n], metric) for n in probs}
        picks.append(min(probs, key=lambda n: (*scores[n], n)))
    return picks


@pytest.mark.parametrize("metric", ["accuracy", "balanced-accuracy"])
def test_greedy_matches_the_naive_definition(metric: str) -> None:
    g = torch.Generator().manual_seed(0)
    # imbalanced, so that the two metrics disagree: 60% class 0
    labels = torch.where(
        torch.rand(60, generator=g) < 0.6, 0, torch.randint(1, 4, (60,), generator=g)
    )
    probs = {f"m{i}": torch.randn(60, 4, generator=g).mul(2).softmax(-1) for i in range(7)}
    picks = naive_greedy(probs, labels, 6, metric)
    choice = select_greedy(probs, labels, max_steps=6, metric=metric)
    key = "val_acc" if metric == "accuracy" else "val_score"
    steps = len(choice.k_curve)
    best = max(range(steps), key=lambda i: (round(choice.k_curve[i][key], 9), -i))
    chosen = picks[: best + 1]
    assert choice.members == list(dict.fromkeys(chosen))
    assert choice.weights == pytest.approx([chosen.count(m) / len(chosen) for m in choice.members])
    assert choice.metric == metric and choice.val_score == choice.k_curve[best][key]
    for i, row in enumerate(choice.k_curve):
        mean = ensemble_probs(probs, picks[: i + 1])
        assert row["val_acc"] == pytest.approx(accuracy(mean, labels))
        assert row[key] == pytest.approx(scorer(metric)(mean, labels))


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


# --------------------------------------------------------------------------- by balanced accuracy
def imbalanced() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """80% class 0. "majority" always answers 0 (accuracy 0.8, balanced 0.5); "fair" misses
    3 of the 8 class-0 images but finds both class-1 ones (accuracy 0.7, balanced 0.8125)."""
    labels = torch.tensor([0] * 8 + [1] * 2)
    majority = one_hot([0] * 10, 2) * 0.6 + 0.2
    fair = one_hot([0] * 5 + [1] * 3 + [1] * 2, 2) * 0.6 + 0.2
    return {"majority": majority, "fair": fair}, labels


def test_balanced_accuracy_picks_the_member_accuracy_misses() -> None:
    probs, labels = imbalanced()
    acc = score_all(probs, labels)
    bal = score_all(probs, labels, "balanced-accuracy")
    assert acc == pytest.approx({"majority": 0.8, "fair": 0.7})
    assert bal == pytest.approx({"majority": 0.5, "fair": 0.8125})
    assert rank(acc)[0] == "majority" and rank(bal)[0] == "fair"
    for builder in (select_ensemble, select_greedy, choose_ensemble):
        by_acc = builder(probs, labels)
        by_bal = builder(probs, labels, metric="balanced-accuracy")
        assert by_acc.members == ["majority"] and by_acc.val_score == by_acc.val_acc
        assert by_acc.val_acc == pytest.approx(0.8)
        assert by_bal.members == ["fair"] and by_bal.metric == "balanced-accuracy"
        assert by_bal.val_score == pytest.approx(0.8125) and by_bal.val_acc == pytest.approx(0.7)
        assert balanced_accuracy(by_bal.probs(probs), labels) == pytest.approx(by_bal.val_score)
    choice = choose_ensemble(probs, labels, metric="balanced-accuracy")
    assert choice.method == "top-k"  # a tie: the simpler one
    assert choice.alternatives == pytest.approx({"top-k": 0.8125, "greedy": 0.8125})
    assert all("val_score" in row and "val_acc" in row for row in choice.k_curve)
    assert all("val_score" not in row for row in choose_ensemble(probs, labels).k_curve)


def test_greedy_candidates_rank_by_the_metric() -> None:
    probs, labels = imbalanced()
    probs["never"] = one_hot([1] * 10, 2) * 0.6 + 0.2  # accuracy 0.2, balanced 0.5
    choice = select_greedy(probs, labels, candidates=1, metric="balanced-accuracy")
    assert choice.members == ["fair"]
    assert select_greedy(probs, labels, candidates=1).members == ["majority"]


def test_an_unknown_metric_is_refused() -> None:
    probs, labels = imbalanced()
    for call in (
        lambda: select_ensemble(probs, labels, metric="f1"),
        lambda: select_greedy(probs, labels, metric="f1"),
        lambda: score_all(probs, labels, "f1"),
    ):
        with pytest.raises(IncaError, match="unknown metric 'f1'"):
            call()
