"""Reading a run's results dict: its adapters, taps and kinds, the picks, the classes. Shared by
the report's tables and plots; results from older runs lack some keys, and these say None."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from inca.errors import IncaError
from inca.report.format import _acc

Adapter = Mapping[str, Any]


def _adapters(results: Mapping[str, Any]) -> list[Adapter]:
    adapters = list(results.get("adapters") or [])
    if not adapters:
        raise IncaError("results has no adapters to report; was the run interrupted before eval?")
    return adapters


def _taps(results: Mapping[str, Any], adapters: Sequence[Adapter]) -> list[str]:
    """Taps shallow to deep: the run's ``taps_order``, then any other adapter tap by index."""
    order = list(results.get("run", {}).get("taps_order") or [])
    extra = {a["tap"]: a.get("tap_index", math.inf) for a in adapters if a["tap"] not in order}
    return order + sorted(extra, key=lambda t: (extra[t], t))


def _kinds(adapters: Sequence[Adapter]) -> list[str]:
    """Adapter kinds in order of first appearance (stable colours and columns)."""
    return list(dict.fromkeys(a["kind"] for a in adapters))


def _best_name(results: Mapping[str, Any]) -> str | None:
    return results.get("selection", {}).get("best", {}).get("name")


def best_per_tap(results: Mapping[str, Any]) -> dict[tuple[str, str], Adapter]:
    """``{(kind, tap): adapter}`` with the highest validation accuracy of that kind on that tap.

    Ties go to the adapter listed first, except that the selected best adapter wins a tie on its
    own tap, so that the cell the report marks as "best" is always on display.
    """
    best_name = _best_name(results)
    picks: dict[tuple[str, str], Adapter] = {}
    for a in _adapters(results):
        val = _acc(a.get("val_acc"))
        if val is None:
            continue
        key = (a["kind"], a["tap"])
        held = _acc(picks[key].get("val_acc")) if key in picks else None
        if held is None or val > held or (val == held and a["name"] == best_name):
            picks[key] = a
    return picks


def _metric_words(results: Mapping[str, Any]) -> str:
    """What ranked the members, in words: "accuracy" or "balanced accuracy"."""
    return str(results.get("selection", {}).get("metric") or "accuracy").replace("-", " ")


def _ensemble_label(ens: Mapping[str, Any]) -> str:
    k = ens.get("k", len(ens.get("members", [])))
    return f"greedy ensemble of {k}" if ens.get("method") == "greedy" else f"top-{k} ensemble"


def _picks(results: Mapping[str, Any], key: str) -> list[tuple[str, Mapping[str, Any]]]:
    """``(label, record)`` of the best adapter and the ensemble, those whose record has
    ``key``."""
    selection = results.get("selection", {})
    found = []
    if (best := selection.get("best")) and key in best:
        found.append((f"best single adapter `{best.get('name', '?')}`", best))
    if (ens := selection.get("ensemble")) and key in ens:
        found.append((_ensemble_label(ens), ens))
    return found


def _class_names(results: Mapping[str, Any]) -> list[str] | None:
    if names := results.get("classes", {}).get("names"):
        return list(names)
    for _, pick in _picks(results, "test_recall"):
        return list(pick["test_recall"])
    return None


def _test_counts(results: Mapping[str, Any]) -> list[int] | None:
    """Test images per class: recorded, or the row sums of a recorded confusion matrix."""
    if counts := results.get("classes", {}).get("test_counts"):
        return list(counts)
    for _, pick in _picks(results, "test_confusion"):
        return [sum(row) for row in pick["test_confusion"]]
    return None
