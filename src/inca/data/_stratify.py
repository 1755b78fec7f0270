"""Stratified, seeded index selection: the one rule every split in the data layer follows.

Kept apart from ``splits.py`` because dataset sources need it too (to carve a fixed test split
where a dataset has none) and ``splits.py`` itself loads sources.
"""

from __future__ import annotations

import numpy as np

from inca.errors import IncaError


def _allocate(counts: np.ndarray, size: int, caps: np.ndarray) -> np.ndarray:
    """How many items to take from each class: proportional to ``counts``, at most ``caps``.

    Floors of the proportional quotas first; then, if ``size`` allows, every class that may give
    at least one item gives one (rare classes would otherwise vanish); then single items are
    moved to or from the classes furthest from their quota until the total is ``size``.
    Ties go to the lower class index, so the result is deterministic.
    """
    quota = size * counts / counts.sum()  # (K,) ideal, fractional
    take = np.minimum(np.floor(quota).astype(np.int64), caps)
    eligible = caps > 0
    if size >= eligible.sum():
        take[eligible] = np.maximum(take[eligible], 1)
    while take.sum() > size:  # only after the at-least-one rule; some class then has >= 2
        over = np.where(take > 1, take - quota, -np.inf)
        take[int(np.argmax(over))] -= 1
    while take.sum() < size:  # size <= caps.sum() was checked by the caller
        under = np.where(take < caps, quota - take, -np.inf)
        take[int(np.argmax(under))] += 1
    return take


def _select(labels: np.ndarray, size: int, seed: int, keep_one: bool) -> np.ndarray:
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
    take = _allocate(counts, size, caps)  # (K,)
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


def carve_indices(labels: np.ndarray, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split positions into ``(kept, carved)`` with ``len(carved) == size``, carved stratified.

    Unlike :func:`stratified_indices`, never carves the last item of a class: a class with a
    single example stays whole in ``kept`` (the training side), so training sees every class.
    """
    carved = _select(labels, int(size), seed, keep_one=True)
    kept = np.setdiff1d(np.arange(len(labels), dtype=np.int64), carved, assume_unique=True)
    return kept, carved


def carve_fraction(
    labels: np.ndarray, fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`carve_indices` with a size of ``round(fraction * N)``, clipped to what can be carved.

    Used for the fixed test splits of datasets that ship without one; clipping (instead of an
    error) lets tiny datasets load, with a smaller test split.
    """
    labels = np.asarray(labels)
    counts = np.unique(labels, return_counts=True)[1]
    size = min(round(fraction * len(labels)), int((counts - 1).sum()))
    return carve_indices(labels, size, seed)
