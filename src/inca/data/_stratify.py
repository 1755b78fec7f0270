"""Stratified, seeded index selection: the one rule every split in the data layer follows.

Kept apart from ``splits.py`` because dataset sources need it too (to carve a fixed test split
where a dataset has none) and ``splits.py`` itself loads sources.
"""

from __future__ import annotations

import numpy as np

from inca.errors import IncaError

FEW = 3  # "a few": what every class gives a held-out split when the class and the size allow
# Which rule carved a held-out split: 1, at least one image of every class (runs and tasks made
# before the rule had a number); 2, a few of every class (``few_each``). Saved with every run
# and task, so that a split is rebuilt by the rule that made it.
SPLIT_RULE = 2


def few_each(counts: np.ndarray, caps: np.ndarray) -> np.ndarray:
    """The images each class gives a held-out split when the size allows: a few (up to
    ``FEW``), one per four of its images beyond the first (at least one), never above ``caps``.
    A class of 4 gives 1, of 10 gives 2, of 13 or more gives 3; a class of one gives none."""
    return np.minimum(np.minimum(FEW, np.maximum(1, (counts - 1) // 4)), caps)


def _allocate(counts: np.ndarray, size: int, caps: np.ndarray, held_out: bool) -> np.ndarray:
    """How many items to take from each class: proportional to ``counts``, at most ``caps``.

    Floors of the proportional quotas first; then, if ``size`` allows, every class gives at
    least one (rare classes would otherwise vanish), and a ``held_out`` split (validation,
    test) at least :func:`few_each`, so that it can judge every class; then single items are
    moved to or from the classes furthest from their quota until the total is ``size``. Ties
    go to the lower class index, so the result is deterministic: a function of the class
    counts and ``size`` alone.
    """
    quota = size * counts / counts.sum()  # (K,) ideal, fractional
    take = np.minimum(np.floor(quota).astype(np.int64), caps)
    eligible = caps > 0
    few = few_each(counts, caps) if held_out else np.minimum(eligible, 1)  # (K,)
    if size < few.sum():
        few = np.minimum(eligible, 1)  # a few of each do not fit: at least one, if that fits
    floor = few if size >= few.sum() else np.zeros_like(few)  # (K,) what trimming keeps
    take = np.maximum(take, floor)
    while take.sum() > size:  # only after a floor rule; some class is then above its floor
        over = np.where(take > np.maximum(floor, 1), take - quota, -np.inf)
        take[int(np.argmax(over))] -= 1
    while take.sum() < size:  # size <= caps.sum() was checked by the caller
        under = np.where(take < caps, quota - take, -np.inf)
        take[int(np.argmax(under))] += 1
    return take


def holdout_size(labels: np.ndarray, fraction: float, rule: int = SPLIT_RULE) -> int:
    """The size of a held-out split carved by default: ``fraction`` of the items, raised so that
    every class can give :func:`few_each`, at most what leaves one item of every class behind."""
    counts = np.unique(np.asarray(labels), return_counts=True)[1]
    caps = counts - 1
    few = few_each(counts, caps).sum() if rule >= 2 else 0
    return int(min(max(round(fraction * len(labels)), few), caps.sum()))


def _select(
    labels: np.ndarray, size: int, seed: int, keep_one: bool, rule: int = SPLIT_RULE
) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise IncaError(f"labels must be one-dimensional, got shape {labels.shape}")
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    caps = counts - 1 if keep_one else counts
    if size < 0 or size > caps.sum():
        what = "while leaving one image of every class behind" if keep_one else "in all"
        raise IncaError(
            f"cannot take {size} images stratified by class: there are {int(caps.sum())} "
            f"available {what} ({len(labels)} images, {len(classes)} classes); ask for fewer"
        )
    if size == 0:
        return np.zeros(0, dtype=np.int64)
    take = _allocate(counts, size, caps, held_out=keep_one and rule >= 2)  # (K,)
    # One seeded random order of all items; each class keeps its first take[k] items in it.
    # Sorting raw PCG64 output (a stream numpy keeps stable across versions, unlike
    # Generator.permutation) keeps the fixed splits identical on every machine.
    keys = np.random.PCG64(seed).random_raw(len(labels))  # (N,) uint64
    order = np.argsort(keys, kind="stable")  # (N,)
    grouped = order[np.argsort(inverse[order], kind="stable")]  # by class, random within class
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])  # (K,) first slot of each class
    rank = np.empty(len(labels), dtype=np.int64)  # (N,) place of each item within its class
    rank[grouped] = np.arange(len(labels)) - starts[inverse[grouped]]
    return np.flatnonzero(rank < take[inverse]).astype(np.int64)


def stratified_indices(labels: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """A deterministic stratified sample of ``size`` positions into ``labels``, sorted.

    Each class gets a share proportional to its frequency (within one item); when ``size`` is at
    least the number of classes, every class gets at least one. Same inputs, same output.
    """
    return _select(labels, int(size), seed, keep_one=False)


def carve_indices(
    labels: np.ndarray, size: int, seed: int = 0, rule: int = SPLIT_RULE
) -> tuple[np.ndarray, np.ndarray]:
    """Split positions into ``(kept, carved)`` with ``len(carved) == size``, carved stratified.

    Unlike :func:`stratified_indices`, never carves the last item of a class: a class with a
    single example stays whole in ``kept`` (the training side), so training sees every class.
    """
    carved = _select(labels, int(size), seed, keep_one=True, rule=rule)
    kept = np.setdiff1d(np.arange(len(labels), dtype=np.int64), carved, assume_unique=True)
    return kept, carved


def carve_fraction(
    labels: np.ndarray, fraction: float, seed: int = 0, rule: int = SPLIT_RULE
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`carve_indices` with the size :func:`holdout_size` gives: ``fraction`` of the
    items, a few of every class, clipped to what can be carved.

    Used for the fixed test splits of datasets that ship without one and for default validation
    splits; clipping (instead of an error) lets tiny datasets load, with smaller held-out splits.
    """
    return carve_indices(labels, holdout_size(labels, fraction, rule), seed, rule)
