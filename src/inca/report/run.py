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

from inca.data.views import VIEW_SETS
from inca.report.class_report import (
    _confusion_tables,
    _recall_table,
    imbalance_warning,
)
from inca.report.format import (
    DASH,
    _acc,
    _duration,
    _int,
    _num,
    _pct,
    _share,
    markdown_table,
)
from inca.report.results_view import (
    Adapter,
    _adapters,
    _best_name,
    _ensemble_label,
    _kinds,
    _metric_words,
    _taps,
    best_per_tap,
)
from inca.report.run_plots import (
    plot_accuracy_by_layer,
    plot_confusion,
)
from inca.utils.io import atomic_write

# --- reading the results dict -------------------------------------------------------------


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
    if views := _views_line(selection):
        text += "\n\n" + views
    if seeds := results.get("seeds"):
        text += "\n\n" + _seeds_table(seeds)
    return text


def _views_words(run: Mapping[str, Any]) -> str:
    """ ", 8 dihedral views per image (at test time too)" where the run used exact views."""
    views = run.get("views", "none")
    if views == "none" or views not in VIEW_SETS:
        return ""
    return (f", {len(VIEW_SETS[views])} {views} views per image"
            + (" (at test time too)" if run.get("test_views") else ""))  # fmt: skip


def _views_line(selection: Mapping[str, Any]) -> str:
    """What the test-time views buy: each pick's accuracy with the views averaged (as selected
    and served) and on the images as they are, from the same trained adapters."""
    views = selection.get("test_views")
    if not views:
        return ""
    parts = []
    for key, label in (("best", "best single adapter"), ("ensemble", "ensemble")):
        pick = selection.get(key) or {}
        if one := pick.get("one_view"):
            gain = (pick["test_acc"] - one["test_acc"]) * 100
            parts.append(
                f"{label}: test {_pct(pick.get('test_acc'))} with them, "
                f"{_pct(one.get('test_acc'))} without ({gain:+.2f} points; validation "
                f"{_pct(pick.get('val_acc'))} vs {_pct(one.get('val_acc'))})"
            )
    if not parts:
        return ""
    return (
        f"Test-time views ({views}): the probabilities are averaged over each image's "
        f"{len(VIEW_SETS.get(views, ()))} views, one backbone pass per view. "
        f"{'; '.join(parts)}."
    )


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
        f"{'on' if run.get('augment') else 'off'}{_views_words(run)}, "
        f"{run.get('precision', '?')} on "
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
