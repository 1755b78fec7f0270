"""The run's plots: accuracy against tap depth, and the confusion matrices of the picks
(matplotlib's object API on the Agg canvas, through ``inca.report.plot``)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from inca.report.format import _acc, _pct
from inca.report.plot import new_figure, save_png
from inca.report.results_view import (
    Adapter,
    _adapters,
    _best_name,
    _class_names,
    _kinds,
    _picks,
    _taps,
    best_per_tap,
)

ANNOTATE_CLASSES = 25  # more classes: the confusion plot has no counts written in its cells


TICK_CLASSES = 50  # more classes: the confusion plot has no class names on its axes


def _percent_or_nan(adapter: Adapter | None, key: str) -> float:
    """Accuracy in %, NaN where absent: matplotlib leaves a gap in the line there."""
    acc = _acc(adapter.get(key)) if adapter is not None else None
    return math.nan if acc is None else 100 * acc


def plot_accuracy_by_layer(results: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """PNG of accuracy (%) against tap depth: per kind, best val (solid) and its test (dashed);
    the reference probe as a dotted line; a star on the selected best adapter."""
    adapters = _adapters(results)
    taps, picks = _taps(results, adapters), best_per_tap(results)
    xs = range(len(taps))
    fig = new_figure(9, 5, layout="constrained")
    ax = fig.add_subplot()
    for i, kind in enumerate(_kinds(adapters)):
        chosen = [picks.get((kind, t)) for t in taps]
        val = [_percent_or_nan(a, "val_acc") for a in chosen]
        test = [_percent_or_nan(a, "test_acc") for a in chosen]
        ax.plot(xs, val, "-o", color=f"C{i}", label=f"{kind}: val (best per tap)")
        ax.plot(
            xs,
            test,
            "--",
            marker=".",
            color=f"C{i}",
            alpha=0.8,
            label=f"{kind}: test (same adapter)",
        )
    if (ref := results.get("reference")) and (ref_test := _acc(ref.get("test_acc"))) is not None:
        label = f"reference {ref['name']}: test {100 * ref_test:.2f}%"
        ax.axhline(100 * ref_test, linestyle=":", color="0.3", label=label)
    by_name = {a["name"]: a for a in adapters}
    best = by_name.get(_best_name(results) or "")
    if best is not None and best["tap"] in taps and (val := _acc(best.get("val_acc"))) is not None:
        color = f"C{_kinds(adapters).index(best['kind'])}"
        label = f"selected {best['name']}: val {100 * val:.2f}%, test {_pct(best.get('test_acc'))}"
        ax.plot(
            [taps.index(best["tap"])],
            [100 * val],
            "*",
            ms=18,
            color=color,
            markeredgecolor="black",
            label=label,
            zorder=5,
        )
    many = len(taps) > 6
    ax.set_xticks(list(xs), taps, rotation=45 if many else 0, ha="right" if many else "center")
    ax.set_xlabel("tap (layer depth)")
    ax.set_ylabel("accuracy (%)")
    run = results.get("run", {})
    ax.set_title(
        f"{run.get('backbone', {}).get('name', '?')} on {run.get('data', '?')}: accuracy by layer"
    )
    ax.margins(y=0.08)  # room for the star at the top
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return save_png(fig, path, dpi=150)


def plot_confusion(results: Mapping[str, Any], path: str | os.PathLike) -> Path | None:
    """PNG of the test confusion matrices of the best adapter and the ensemble, side by side:
    each cell coloured by its share of the true class's images (rows sum to 1), its count
    written in it (up to :data:`ANNOTATE_CLASSES` classes). None, and no file, when the run
    recorded no confusion matrix."""
    picks = _picks(results, "test_confusion")
    names = _class_names(results)
    if not picks or not names:
        return None
    k = len(names)
    side = min(max(4.5, 0.35 * k), 9.0)  # inches per panel: room for class names, within reason
    fig = new_figure(side * len(picks) + 1.2, side + 0.8, layout="constrained")
    axes = fig.subplots(1, len(picks), squeeze=False)[0]
    image = None
    for ax, (label, pick) in zip(axes, picks, strict=True):
        counts = pick["test_confusion"]
        totals = [sum(row) for row in counts]
        shares = [[c / t if t else 0.0 for c in row] for row, t in zip(counts, totals, strict=True)]
        image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
        if k <= ANNOTATE_CLASSES:
            size = "small" if k <= 10 else "x-small"
            for i, row in enumerate(counts):
                for j, c in enumerate(row):
                    color = "white" if shares[i][j] > 0.5 else "black"
                    ax.text(j, i, str(c), ha="center", va="center", color=color, fontsize=size)
        if k <= TICK_CLASSES:
            tilt, font = k > 4, "medium" if k <= 20 else "x-small"
            ax.set_xticks(range(k), names, rotation=45 if tilt else 0,
                          ha="right" if tilt else "center", fontsize=font)  # fmt: skip
            ax.set_yticks(range(k), names, fontsize=font)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(
            f"{label.replace('`', '')}\ntest accuracy {_pct(pick.get('test_acc'))}, "
            f"balanced {_pct(pick.get('test_balanced_acc'))}",
            fontsize="medium",
        )
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="share of the true class")
    return save_png(fig, path, dpi=120)
