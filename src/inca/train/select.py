"""Choosing among trained adapters: rank on validation, best single, ensembles.

Selection only ever looks at validation numbers. Test accuracy is computed once, at the end,
for the chosen adapter and ensemble (and for every adapter, for the per-layer table), never to
choose anything.

What ranks is ``metric`` (:data:`inca.train.metrics.METRICS`): "accuracy" (the default), or
"balanced-accuracy", the mean recall per class, for imbalanced data, where a model that always
answers the majority class has a high accuracy and is useless.

Two ensemble builders compete (``choose_ensemble``):

* top-k: the k best adapters by the validation metric, averaged uniformly. Simple, but its
  members tend to make the same mistakes (neighbouring taps of one backbone), so adding more of
  them helps little.
* greedy forward selection with replacement (Caruana et al., 2004): grow the ensemble one member
  at a time, each time adding whichever adapter most improves the validation metric. It picks
  adapters that fix the current ensemble's errors even when they are mediocre alone, and adding
  a member again raises its weight, so the result is a weighted ensemble.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from inca.errors import IncaError

_TINY = 1e-12  # probability floor inside the log, so a confident mistake costs a finite NLL
# two metric values closer than this are a tie: float rounding, not a better model. Accuracies
# of N < 1e9 images differ by at least 1/N; balanced accuracies nearer than this are tied anyway
_TIE = 1e-9

Scorer = Callable[[Tensor, Tensor], float]


def _metrics():
    """``inca.train.metrics``, imported on use: importing ``inca.train`` runs the Trainer's
    module, which imports this one."""
    from inca.train import metrics

    return metrics


def accuracy(probs: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy of (N, C) scores against (N,) labels."""
    return _metrics().accuracy(probs, labels)


def scorer(metric: str = "accuracy") -> Scorer:
    """The function ``(probs (N, C), labels (N,)) -> float`` of ``metric``; higher is better."""
    metrics = _metrics()
    metrics.check_metric(metric)
    return lambda probs, labels: metrics.score(metric, probs, labels)


def score_all(
    probs: Mapping[str, Tensor], labels: Tensor, metric: str = "accuracy"
) -> dict[str, float]:
    """Each name's ``metric`` on ``labels``."""
    fn = scorer(metric)
    return {n: fn(p, labels) for n, p in probs.items()}


def rank(scores: Mapping[str, float]) -> list[str]:
    """Names from best to worst score; ties broken by name, so the order is reproducible."""
    return sorted(scores, key=lambda n: (-scores[n], n))


def _better(a: float, b: float, metric: str, n: int) -> bool:
    """Whether metric value ``a`` beats ``b`` on ``n`` images by more than rounding: accuracies
    compare as counts of correct images (two ways of computing one accuracy round apart)."""
    if metric == "accuracy":
        return round(a * n) > round(b * n)
    return a > b + _TIE


def ensemble_probs(
    probs: Mapping[str, Tensor], members: Sequence[str], weights: Sequence[float] | None = None
) -> Tensor:
    """Mean of the members' class probabilities: (N, C); weighted by ``weights`` (aligned with
    ``members``, normalised here) when given, uniform otherwise."""
    stacked = torch.stack([probs[m] for m in members])  # (M, N, C)
    if weights is None:
        return stacked.mean(0)
    if len(weights) != len(members):
        raise IncaError(f"{len(weights)} weights for {len(members)} members; give one per member")
    w = torch.as_tensor(list(weights), dtype=stacked.dtype, device=stacked.device)  # (M,)
    if not torch.isfinite(w).all() or (w <= 0).any():
        raise IncaError(f"ensemble weights must be finite and > 0, got {list(weights)}")
    return torch.einsum("m,mnc->nc", w / w.sum(), stacked)


@dataclass
class EnsembleChoice:
    """A chosen ensemble and how it was chosen.

    ``members`` are distinct, best first for top-k and in order of first addition for greedy.
    ``weights`` (aligned with ``members``, summing to 1) is None for a uniform mean: what top-k
    gives, and what a ``Task`` does without weights. ``val_acc`` is the ensemble's validation
    accuracy, whatever ranked it; ``val_score`` its validation ``metric`` (what chose it; equal
    to ``val_acc`` for accuracy). ``k_curve`` has one entry per ensemble tried: {"k", "val_acc"}
    for top-k; {"step", "k" (distinct members so far), "val_acc"} for greedy, each with
    "val_score" too when the metric is not accuracy. ``alternatives`` is the validation metric
    of each method ``choose_ensemble`` compared.
    """

    members: list[str]
    val_acc: float
    k_curve: list[dict[str, float]] = field(default_factory=list)
    weights: list[float] | None = None
    method: str = "top-k"
    alternatives: dict[str, float] = field(default_factory=dict)
    metric: str = "accuracy"
    val_score: float = math.nan  # NaN: not given, the accuracy (for metric "accuracy")

    def __post_init__(self) -> None:
        if math.isnan(self.val_score) and self.metric == "accuracy":
            self.val_score = self.val_acc

    @property
    def k(self) -> int:
        """Number of distinct members (a member added twice by greedy counts once)."""
        return len(self.members)

    def probs(self, probs: Mapping[str, Tensor]) -> Tensor:
        """This ensemble's (N, C) probabilities on another split, e.g. test."""
        return ensemble_probs(probs, self.members, self.weights)


def _point(metric: str, acc: float, value: float, **where: float) -> dict[str, float]:
    """One k_curve entry: where, the accuracy, and the metric when it is another."""
    return where | {"val_acc": acc} | ({} if metric == "accuracy" else {"val_score": value})


def select_ensemble(
    val_probs: Mapping[str, Tensor],
    val_labels: Tensor,
    max_k: int = 10,
    metric: str = "accuracy",
) -> EnsembleChoice:
    """The top-k ensemble (k = 1..max_k, adapters ranked by the validation ``metric``) with the
    best validation ``metric``; the smallest k wins a tie."""
    if not val_probs:
        raise IncaError("no adapters to select from")
    fn = scorer(metric)
    order = rank(score_all(val_probs, val_labels, metric))
    best: EnsembleChoice | None = None
    curve = []
    for k in range(1, min(max_k, len(order)) + 1):
        mean = ensemble_probs(val_probs, order[:k])  # (N, C)
        acc = accuracy(mean, val_labels)
        value = acc if metric == "accuracy" else fn(mean, val_labels)
        curve.append(_point(metric, acc, value, k=k))
        if best is None or _better(value, best.val_score, metric, len(val_labels)):
            best = EnsembleChoice(order[:k], acc, metric=metric, val_score=value)
    assert best is not None
    best.k_curve = curve
    return best


# --------------------------------------------------------------------------- greedy selection
def _greedy_pool(
    val_probs: Mapping[str, Tensor], val_labels: Tensor, candidates: int | None, metric: str
) -> list[str]:
    """The names greedy may add, sorted by name (so a lower index breaks the last tie)."""
    if not val_probs:
        raise IncaError("no adapters to select from")
    if len(val_labels) == 0:
        raise IncaError("accuracy of an empty split is undefined; give the split some images")
    if candidates is None:
        return sorted(val_probs)
    if candidates < 1:
        raise IncaError(f"candidates must be >= 1 (or None for all), got {candidates}")
    return sorted(rank(score_all(val_probs, val_labels, metric))[:candidates])


def _stack(val_probs: Mapping[str, Tensor], names: list[str], labels: Tensor) -> Tensor:
    """The pool's probabilities as one float64 (M, N, C) tensor; float64 so that a running sum
    of many members does not drift enough to flip near-tied decisions."""
    shapes = {tuple(val_probs[n].shape) for n in names}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise IncaError(
            f"every adapter's validation probabilities must be one (N, C) shape, got "
            f"{sorted(shapes)}"
        )
    stacked = torch.stack([val_probs[n] for n in names]).to(torch.float64)  # (M, N, C)
    if stacked.shape[1] != len(labels):
        raise IncaError(
            f"{stacked.shape[1]} validation predictions but {len(labels)} labels; they must match"
        )
    return stacked


def _batched_scores(hits: Tensor, labels: Tensor, num_classes: int, metric: str) -> Tensor:
    """(M,) float64 ``metric`` of M candidates from their (M, N) bool hits: accuracy, or the
    mean over the classes present in ``labels`` of each class's share of hits."""
    if metric == "accuracy":
        return hits.sum(-1).double() / len(labels)  # exact counts / N: equal counts, equal values
    one_hot = torch.nn.functional.one_hot(labels, num_classes).double()  # (N, K)
    support = one_hot.sum(0)  # (K,)
    present = support > 0
    per_class = hits.double() @ one_hot  # (M, K): hits per class
    return (per_class[:, present] / support[present]).mean(-1)


def _best_addition(value: Tensor, nll: Tensor) -> int:
    """Index of the best candidate: best metric ``value`` (within :data:`_TIE`), then lowest
    NLL, then lowest index (name)."""
    top = value >= value.max() - _TIE  # (M,) bool
    nll = torch.where(top, nll, torch.full_like(nll, float("inf")))
    return int(torch.nonzero(nll == nll.min())[0])  # first: lowest index among exact ties


def select_greedy(
    val_probs: Mapping[str, Tensor],
    val_labels: Tensor,
    max_steps: int = 25,
    candidates: int | None = None,
    metric: str = "accuracy",
) -> EnsembleChoice:
    """Greedy forward ensemble selection with replacement (Caruana et al., 2004).

    Starting empty, each of ``max_steps`` steps adds (possibly again) the adapter whose addition
    gives the best validation ``metric`` of the mean probabilities; ties go to the lower
    validation negative log-likelihood, then to the name, so the result is reproducible.
    ``candidates`` restricts the pool to that many adapters best by the validation metric
    (fewer, stronger candidates overfit the validation set less). The step count with the best
    metric is kept (the fewest steps on a tie); an adapter added c times of s steps gets weight
    c / s.

    Every candidate's addition is scored in one batched op per step against a running sum, so a
    step costs O(M N C) tensor work, not a Python loop over the M candidates.
    """
    if max_steps < 1:
        raise IncaError(f"max_steps must be >= 1, got {max_steps}")
    _metrics().check_metric(metric)
    names = _greedy_pool(val_probs, val_labels, candidates, metric)
    pool = _stack(val_probs, names, val_labels)  # (M, N, C)
    labels = val_labels.to(pool.device).long()  # (N,)
    rows = torch.arange(len(labels), device=pool.device)
    pool_true = pool[:, rows, labels]  # (M, N): each candidate's probability of the true class
    running = torch.zeros_like(pool[0])  # (N, C): sum of the chosen members' probabilities
    running_true = torch.zeros_like(pool_true[0])  # (N,)
    picks: list[int] = []
    curve: list[dict[str, float]] = []
    values: list[float] = []
    for step in range(1, max_steps + 1):
        preds = (running + pool).argmax(-1)  # (M, N); dividing by step would not move argmax
        hits = preds == labels  # (M, N)
        value = _batched_scores(hits, labels, pool.shape[-1], metric)  # (M,)
        nll = -((running_true + pool_true) / step).clamp_min(_TINY).log().mean(-1)  # (M,)
        pick = _best_addition(value, nll)
        picks.append(pick)
        running += pool[pick]
        running_true += pool_true[pick]
        acc = hits[pick].sum().item() / len(labels)
        values.append(value[pick].item())
        curve.append(_point(metric, acc, values[-1], step=step, k=len(set(picks))))
    top = max(values)
    best = next(i for i, v in enumerate(values) if v >= top - _TIE)  # the fewest steps
    members, weights = _multiplicities([names[i] for i in picks[: best + 1]])
    return EnsembleChoice(
        members, curve[best]["val_acc"], curve, weights=weights, method="greedy", metric=metric,
        val_score=values[best],
    )  # fmt: skip


def _multiplicities(added: list[str]) -> tuple[list[str], list[float]]:
    """Distinct names in order of first addition, and each one's share of the additions."""
    counts: dict[str, int] = {}
    for name in added:
        counts[name] = counts.get(name, 0) + 1
    return list(counts), [c / len(added) for c in counts.values()]


def choose_ensemble(
    val_probs: Mapping[str, Tensor],
    val_labels: Tensor,
    max_k: int = 10,
    greedy_steps: int = 25,
    candidates: int | None = None,
    metric: str = "accuracy",
) -> EnsembleChoice:
    """The better on the validation ``metric`` of the top-k and the greedy ensemble; top-k wins
    a tie, being simpler (uniform, usually fewer members). The returned choice's
    ``alternatives`` holds both validation values of the metric, {"top-k": v, "greedy": v}, so a
    report can say what lost."""
    top = select_ensemble(val_probs, val_labels, max_k=max_k, metric=metric)
    greedy = select_greedy(
        val_probs, val_labels, max_steps=greedy_steps, candidates=candidates, metric=metric
    )
    better = _better(greedy.val_score, top.val_score, metric, len(val_labels))
    chosen = greedy if better else top
    chosen.alternatives = {"top-k": top.val_score, "greedy": greedy.val_score}
    return chosen
