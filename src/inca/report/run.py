"""A human report of one run: markdown tables, an accuracy-by-layer plot and the confusion
matrices of the picks, from results.json.

The report reads only the results dict the training engine writes, so it can be regenerated
from an old run without the model or data (a run from before balanced accuracy, recall per class
and confusion matrices were recorded renders without them). Like selection, it chooses by
validation accuracy only: test accuracy is shown beside every pick, never used to make one.

On imbalanced data accuracy flatters: a model that always answers a class holding 69% of the
test images scores 69%. The summary then says so, in words, beside the balanced accuracy.

matplotlib is imported inside the plotting functions (through its object API and the Agg
canvas, no pyplot global state), so the markdown tables work where it is not installed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from inca.errors import IncaError
from inca.report.format import (
    DASH,
    _acc,
    _confusion_table,
    _duration,
    _int,
    _num,
    _pct,
    _share,
    markdown_table,
)
from inca.utils.io import atomic_write

Adapter = Mapping[str, Any]

# the summary warns when balanced accuracy is this far below accuracy on test, and the
# majority class holds at least min(1/2, 2/K) of the test images
IMBALANCE_GAP = 0.05
TABLE_CLASSES = 20  # more classes: no confusion table in markdown (the PNG and JSON have it)
RECALL_CLASSES = 30  # more classes: the recall table lists the worst of the best adapter's
ANNOTATE_CLASSES = 25  # more classes: the confusion plot has no counts written in its cells
TICK_CLASSES = 50  # more classes: the confusion plot has no class names on its axes


# --- reading the results dict -------------------------------------------------------------


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


# --- formatting ---------------------------------------------------------------------------


def _summary_table(results: Mapping[str, Any], adapters: Sequence[Adapter]) -> str:
    by_name = {a["name"]: a for a in adapters}
    backbone = results.get("run", {}).get("backbone", {})
    bb_params = backbone.get("params")
    selection = results.get("selection", {})

    def params_of(names: Sequence[str]) -> int | None:
        found = [by_name.get(n, {}).get("params") for n in names]
        return sum(found) if found and all(isinstance(p, int) for p in found) else None

    picks = [selection.get("best"), selection.get("ensemble"), results.get("reference")]
    balanced = any(p and "test_balanced_acc" in p for p in picks)

    def scores(pick: Mapping[str, Any] | None) -> list[str]:
        pick = pick or {}
        shown = [_pct(pick.get("val_acc")), _pct(pick.get("test_acc"))]
        if balanced:
            shown += [_pct(pick.get("val_balanced_acc")), _pct(pick.get("test_balanced_acc"))]
        return shown

    rows = []
    if best := selection.get("best"):
        p = params_of([best["name"]])
        rows.append(
            ["best single adapter", best["name"], *scores(best), _int(p), _share(p, bb_params)]
        )
    if ens := selection.get("ensemble"):
        members = list(ens.get("members", []))
        p = params_of(members)
        weights = ens.get("weights")
        shown = (
            ", ".join(f"{m} ×{w:.2f}" for m, w in zip(members, weights, strict=True))
            if weights
            else ", ".join(members)
        )
        rows.append([_ensemble_label(ens), shown, *scores(ens), _int(p), _share(p, bb_params)])
    if ref := results.get("reference"):
        p = params_of([ref["name"]])
        label = "reference" + (f" ({ref['note']})" if ref.get("note") else "")
        rows.append([label, ref["name"], *scores(ref), _int(p), _share(p, bb_params)])
    rows.append(
        [
            "frozen backbone (for scale)",
            backbone.get("name", "?"),
            *[DASH] * len(scores(None)),
            _int(bb_params),
            "100%" if isinstance(bb_params, int) else DASH,
        ]
    )
    header = ["", "adapter", "val acc", "test acc"]
    header += ["val bal acc", "test bal acc"] if balanced else []
    text = markdown_table([*header, "params", "% of backbone"], rows)
    metric = _metric_words(results)
    if metric != "accuracy":
        text += f"\n\nThe best adapter and the ensemble were chosen by validation {metric}."
    if warning := imbalance_warning(results):
        text += f"\n\n**{warning}**"
    ens = selection.get("ensemble") or {}
    if alternatives := ens.get("alternatives"):
        tried = ", ".join(f"{k} {_pct(v)}" for k, v in alternatives.items())
        text += f"\n\nEnsembles tried (validation {metric}): {tried}; the better one is kept."
    elif curve := ens.get("k_curve"):
        key = "val_acc" if metric == "accuracy" else "val_score"
        steps = ", ".join(f"k={c['k']} {_pct(c.get(key, c.get('val_acc')))}" for c in curve)
        text += f"\n\nEnsemble validation {metric} by k: {steps}."
    if seeds := results.get("seeds"):
        text += "\n\n" + _seeds_table(seeds)
    return text


def _seeds_table(seeds: Mapping[str, Any]) -> str:
    """Mean ± std over the training seeds (same splits, same cache)."""
    keys = ["val_acc", "test_acc"]
    if any("test_balanced_acc" in seeds.get(k, {}) for k in ("best", "ensemble", "linear")):
        keys.append("test_balanced_acc")

    def mean_std(stats: Mapping[str, Any] | None) -> str:
        if not stats:
            return DASH
        return f"{100 * stats['mean']:.2f} ± {100 * stats['std']:.2f}%"

    rows = []
    for key, label in (("best", "best single"), ("ensemble", "ensemble"), ("linear", "linear")):
        if key in seeds:
            rows.append([label, *(mean_std(seeds[key].get(k)) for k in keys)])
    n = len(seeds.get("seeds", []))
    header = ["", "val acc", "test acc", "test bal acc"][: len(keys) + 1]
    return f"Over {n} training seeds (mean ± std):\n\n" + markdown_table(header, rows)


def _per_layer_table(results: Mapping[str, Any], adapters: Sequence[Adapter]) -> str:
    picks = best_per_tap(results)
    kinds, best_name = _kinds(adapters), _best_name(results)
    header = ["tap"] + [f"{k} {split}" for k in kinds for split in ("val", "test")]
    rows = []
    for tap in _taps(results, adapters):
        row = [tap]
        for kind in kinds:
            a = picks.get((kind, tap))
            val, test = (_pct(a.get("val_acc")), _pct(a.get("test_acc"))) if a else (DASH, DASH)
            if a is not None and a["name"] == best_name:
                val, test = f"**{val}**", f"**{test}**"
            row += [val, test]
        rows.append(row)
    note = (
        "Each cell is the adapter of that kind on that tap with the best *validation* accuracy, "
        "and its test accuracy; **bold** marks the selected best adapter."
    )
    return note + "\n\n" + markdown_table(header, rows)


def _all_adapters_table(adapters: Sequence[Adapter]) -> str:
    def key(a: Adapter) -> tuple[float, str]:
        val = _acc(a.get("val_acc"))
        return (-val if val is not None else math.inf, a["name"])

    balanced = any("test_balanced_acc" in a for a in adapters)
    header = ["name", "kind", "tap", "lr", "wd", "params", "best epoch", "val acc", "test acc"]
    header += ["test bal acc"] if balanced else []
    rows = [
        [
            a["name"],
            a["kind"],
            a["tap"],
            "L-BFGS" if "l2" in a else _num(a.get("lr")),
            f"l2 {_num(a['l2'])}" if "l2" in a else _num(a.get("weight_decay")),
            _int(a.get("params")),
            _num(a.get("best_epoch"))
            + (f" (halved after {a['dropped_after']})" if a.get("dropped_after") else ""),
            _pct(a.get("val_acc")),
            _pct(a.get("test_acc")),
        ]
        + ([_pct(a.get("test_balanced_acc"))] if balanced else [])
        for a in sorted(adapters, key=key)
    ]
    return markdown_table(header, rows)


def results_table(results: Mapping[str, Any], every_adapter: bool = True) -> str:
    """Markdown: the summary, recall per class and confusion matrices of the picks (when the run
    recorded them), the best adapter of each kind per tap, and (``every_adapter``) every
    adapter by validation accuracy."""
    adapters = _adapters(results)
    parts = ["## Summary", _summary_table(results, adapters)]
    if recall := _recall_table(results):
        parts += ["## Recall per class (test)", recall]
    if confusion := _confusion_tables(results):
        parts += ["## Confusion matrices (test)", confusion]
    parts += ["## Accuracy by layer", _per_layer_table(results, adapters)]
    if every_adapter:
        parts += [
            f"## All adapters ({len(adapters)}, by validation accuracy)",
            _all_adapters_table(adapters),
        ]
    return "\n\n".join(parts) + "\n"


def run_summary(results: Mapping[str, Any]) -> str:
    """One paragraph: what was trained, on what, how long it took."""
    run = results.get("run", {})
    backbone = run.get("backbone", {})
    sizes = run.get("sizes", {})
    adapters = results.get("adapters") or []
    size = backbone.get("preprocess", {}).get("image_size")
    parts = [f"Backbone **{backbone.get('name', '?')}**"]
    if isinstance(backbone.get("params"), int):
        parts[0] += f" ({backbone['params'] / 1e6:.1f}M parameters, frozen)"
    data = f"data **{run.get('data', '?')}**"
    if sizes:
        data += " (" + " / ".join(f"{_int(n)} {split}" for split, n in sizes.items()) + " images"
        data += f" at {size}px)" if size else ")"
    parts.append(data)
    # the single taps SGD adapters read (a group "block.5+block.8" reads two)
    n_taps = len({t for a in adapters if "l2" not in a for t in a["tap"].split("+")})
    solved = sum(1 for a in adapters if "l2" in a)
    epochs = f"{run.get('epochs', '?')} epochs"
    if run.get("max_epochs"):
        epochs += f" of at most {run['max_epochs']} (ended by {run.get('stopped', '?')})"
    parts.append(
        f"{len(adapters) - solved} adapters on {n_taps} taps trained together for {epochs} "
        f"(batch {run.get('batch_size', '?')}, seed {run.get('seed', '?')}, augmentation "
        f"{'on' if run.get('augment') else 'off'}, {run.get('precision', '?')} on "
        f"{run.get('device', '?')})"
        + (f", {solved} linear probes fitted by L-BFGS" if solved else "")
    )
    text = "; ".join(parts) + f", in {_duration(run.get('wall_time_s'))}"
    if isinstance(ips := run.get("train_images_per_s"), int | float):
        text += f" ({ips:.1f} training images/s)"
    text += "."
    if cache := run.get("cache"):
        text += (
            f" Activation cache: {len(cache.get('taps', []))} taps, "
            f"{cache.get('bytes', 0) / 2**30:.2f} GiB on disk ({cache.get('dtype')}), "
            f"{_duration(cache.get('seconds'))} to build or open, in `{cache.get('dir')}`."
        )
    if run.get("budget"):
        text += f" Budget: {run['budget']}."
    return text


# --- the plot -----------------------------------------------------------------------------


def _percent_or_nan(adapter: Adapter | None, key: str) -> float:
    """Accuracy in %, NaN where absent: matplotlib leaves a gap in the line there."""
    acc = _acc(adapter.get(key)) if adapter is not None else None
    return math.nan if acc is None else 100 * acc


def plot_accuracy_by_layer(results: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """PNG of accuracy (%) against tap depth: per kind, best val (solid) and its test (dashed);
    the reference probe as a dotted line; a star on the selected best adapter."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    adapters = _adapters(results)
    taps, picks = _taps(results, adapters), best_per_tap(results)
    xs = range(len(taps))
    fig = Figure(figsize=(9, 5), layout="constrained")
    FigureCanvasAgg(fig)
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
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=150)
    return Path(path)


def plot_confusion(results: Mapping[str, Any], path: str | os.PathLike) -> Path | None:
    """PNG of the test confusion matrices of the best adapter and the ensemble, side by side:
    each cell coloured by its share of the true class's images (rows sum to 1), its count
    written in it (up to :data:`ANNOTATE_CLASSES` classes). None, and no file, when the run
    recorded no confusion matrix."""
    picks = _picks(results, "test_confusion")
    names = _class_names(results)
    if not picks or not names:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k = len(names)
    side = min(max(4.5, 0.35 * k), 9.0)  # inches per panel: room for class names, within reason
    fig = Figure(figsize=(side * len(picks) + 1.2, side + 0.8), layout="constrained")
    FigureCanvasAgg(fig)
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
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return Path(path)


def write_report(results: Mapping[str, Any], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``out_dir/report.md``, ``out_dir/accuracy_by_layer.png`` and, when the run recorded
    confusion matrices, ``out_dir/confusion.png``; return the first two paths."""
    out_dir = Path(out_dir)
    png = plot_accuracy_by_layer(results, out_dir / "accuracy_by_layer.png")
    confusion = plot_confusion(results, out_dir / "confusion.png")
    run = results.get("run", {})
    title = f"# inca: {run.get('backbone', {}).get('name', '?')} on {run.get('data', '?')}"
    parts = [title, run_summary(results), f"![accuracy by layer]({png.name})"]
    if confusion is not None:
        parts.append(
            f"![confusion matrices of the best adapter and the ensemble]({confusion.name})"
        )
    md = "\n\n".join(parts) + "\n\n" + results_table(results)
    md_path = out_dir / "report.md"
    with atomic_write(md_path) as tmp:
        tmp.write_text(md)
    return md_path, png
