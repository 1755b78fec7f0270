"""The report on classes: recall per class, confusion tables, and the warning when the majority
class makes accuracy flatter a model (a model that always answers a class holding 69% of the
test images scores 69%)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from inca.report.format import _acc, _confusion_table, _int, _pct, markdown_table
from inca.report.results_view import (
    _class_names,
    _metric_words,
    _picks,
    _test_counts,
)

# the summary warns when balanced accuracy is this far below accuracy on test, and the
# majority class holds at least min(1/2, 2/K) of the test images
IMBALANCE_GAP = 0.05
TABLE_CLASSES = 20  # more classes: no confusion table in markdown (the PNG and JSON have it)


RECALL_CLASSES = 30  # more classes: the recall table lists the worst of the best adapter's


def imbalance_warning(results: Mapping[str, Any]) -> str | None:
    """A plain sentence when accuracy flatters: the majority class holds a large share of the
    test images and the best adapter's or the ensemble's balanced accuracy is at least
    :data:`IMBALANCE_GAP` below its accuracy; None otherwise (or for an old run)."""
    counts = _test_counts(results)
    if not counts or sum(counts) <= 0:
        return None
    share = max(counts) / sum(counts)
    if share < min(0.5, 2 / len(counts)):
        return None
    gaps = []
    for label, pick in _picks(results, "test_balanced_acc"):
        acc, bal = _acc(pick.get("test_acc")), _acc(pick.get("test_balanced_acc"))
        if acc is not None and bal is not None and acc - bal >= IMBALANCE_GAP:
            gaps.append(f"balanced accuracy {_pct(bal)} vs accuracy {_pct(acc)} for the {label}")
    if not gaps:
        return None
    names = _class_names(results)
    majority = counts.index(max(counts))
    name = f"{names[majority]}, " if names and len(names) == len(counts) else ""
    advice = (
        "Consider --metric balanced-accuracy."
        if _metric_words(results) == "accuracy"
        else "Selection already ranks by balanced accuracy: judge the run by it, not accuracy."
    )
    found = "; ".join(gaps)
    return (
        f"Accuracy flatters this imbalanced test set: the majority class ({name}"
        f"{100 * share:.0f}% of test) dominates. {found[0].upper()}{found[1:]}. {advice}"
    )


def _recall_table(results: Mapping[str, Any]) -> str | None:
    """Recall per class of the best adapter and the ensemble, with the test images per class;
    beyond :data:`RECALL_CLASSES` classes, only the classes the best adapter recalls worst."""
    picks = _picks(results, "test_recall")
    names = _class_names(results)
    if not picks or not names:
        return None
    counts = _test_counts(results)
    counts = counts if counts and len(counts) == len(names) else [None] * len(names)
    rows = [
        [name, _int(n), *(_pct(p["test_recall"].get(name)) for _, p in picks)]
        for name, n in zip(names, counts, strict=True)
    ]
    note = "The share of each class's test images predicted as that class."
    if len(rows) > RECALL_CLASSES:

        def worst(row: list[str]) -> float:
            return _acc(picks[0][1]["test_recall"].get(row[0])) or 0.0

        rows = sorted(rows, key=worst)[:RECALL_CLASSES]
        note += f" The {RECALL_CLASSES} of {len(names)} classes the first column recalls worst."
    header = ["class", "test images", *(f"recall: {label}" for label, _ in picks)]
    return note + "\n\n" + markdown_table(header, rows)


def _confusion_tables(results: Mapping[str, Any]) -> str | None:
    """The test confusion matrix of the best adapter and of the ensemble (rows: true class,
    columns: predicted), or a pointer to ``confusion.png`` when there are too many classes."""
    picks = _picks(results, "test_confusion")
    names = _class_names(results)
    if not picks or not names:
        return None
    if len(names) > TABLE_CLASSES:
        return (
            f"{len(names)} classes are too many for a table: see `confusion.png`, and "
            "`test_confusion` in `results.json`."
        )
    parts = ["Rows: the true class; columns: the predicted class; **bold**: correct."]
    for label, pick in picks:
        parts += [f"{label}:", _confusion_table(names, pick["test_confusion"])]
    return "\n\n".join(parts)
