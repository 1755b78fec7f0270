"""A human report of one run: markdown tables and an accuracy-by-layer plot from results.json.

The report reads only the results dict the training engine writes, so it can be regenerated
from an old run without the model or data. Like selection, it chooses by validation accuracy
only: test accuracy is shown beside every pick, never used to make one.

matplotlib is imported inside :func:`plot_accuracy_by_layer` (through its object API and the
Agg canvas, no pyplot global state), so the markdown tables work where it is not installed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from inca.errors import IncaError
from inca.io import atomic_write
from inca.report_format import DASH, _acc, _duration, _int, _num, _pct, _share, _table

Adapter = Mapping[str, Any]


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


# --- formatting ---------------------------------------------------------------------------


def _summary_table(results: Mapping[str, Any], adapters: Sequence[Adapter]) -> str:
    by_name = {a["name"]: a for a in adapters}
    backbone = results.get("run", {}).get("backbone", {})
    bb_params = backbone.get("params")
    selection = results.get("selection", {})

    def params_of(names: Sequence[str]) -> int | None:
        found = [by_name.get(n, {}).get("params") for n in names]
        return sum(found) if found and all(isinstance(p, int) for p in found) else None

    rows = []
    if best := selection.get("best"):
        p = params_of([best["name"]])
        rows.append(
            [
                "best single adapter",
                best["name"],
                _pct(best.get("val_acc")),
                _pct(best.get("test_acc")),
                _int(p),
                _share(p, bb_params),
            ]
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
        label = (
            f"greedy ensemble of {ens.get('k', len(members))}"
            if ens.get("method") == "greedy"
            else f"top-{ens.get('k', len(members))} ensemble"
        )
        rows.append(
            [
                label,
                shown,
                _pct(ens.get("val_acc")),
                _pct(ens.get("test_acc")),
                _int(p),
                _share(p, bb_params),
            ]
        )
    if ref := results.get("reference"):
        p = params_of([ref["name"]])
        label = "reference" + (f" ({ref['note']})" if ref.get("note") else "")
        rows.append(
            [
                label,
                ref["name"],
                _pct(ref.get("val_acc")),
                _pct(ref.get("test_acc")),
                _int(p),
                _share(p, bb_params),
            ]
        )
    rows.append(
        [
            "frozen backbone (for scale)",
            backbone.get("name", "?"),
            DASH,
            DASH,
            _int(bb_params),
            "100%" if isinstance(bb_params, int) else DASH,
        ]
    )
    header = ["", "adapter", "val acc", "test acc", "params", "% of backbone"]
    text = _table(header, rows)
    ens = selection.get("ensemble") or {}
    if alternatives := ens.get("alternatives"):
        tried = ", ".join(f"{k} {_pct(v)}" for k, v in alternatives.items())
        text += f"\n\nEnsembles tried (validation accuracy): {tried}; the better one is kept."
    elif curve := ens.get("k_curve"):
        steps = ", ".join(f"k={c['k']} {_pct(c.get('val_acc'))}" for c in curve)
        text += f"\n\nEnsemble validation accuracy by k: {steps}."
    if seeds := results.get("seeds"):
        text += "\n\n" + _seeds_table(seeds)
    return text


def _seeds_table(seeds: Mapping[str, Any]) -> str:
    """Mean ± std over the training seeds (same splits, same cache)."""
    rows = []
    for key, label in (("best", "best single"), ("ensemble", "ensemble"), ("linear", "linear")):
        if key in seeds:
            v, t = seeds[key]["val_acc"], seeds[key]["test_acc"]
            rows.append([label, f"{100 * v['mean']:.2f} ± {100 * v['std']:.2f}%",
                         f"{100 * t['mean']:.2f} ± {100 * t['std']:.2f}%"])  # fmt: skip
    n = len(seeds.get("seeds", []))
    return f"Over {n} training seeds (mean ± std):\n\n" + _table(["", "val acc", "test acc"], rows)


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
    return note + "\n\n" + _table(header, rows)


def _all_adapters_table(adapters: Sequence[Adapter]) -> str:
    def key(a: Adapter) -> tuple[float, str]:
        val = _acc(a.get("val_acc"))
        return (-val if val is not None else math.inf, a["name"])

    header = ["name", "kind", "tap", "lr", "wd", "params", "best epoch", "val acc", "test acc"]
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
        for a in sorted(adapters, key=key)
    ]
    return _table(header, rows)


def results_table(results: Mapping[str, Any], every_adapter: bool = True) -> str:
    """Markdown: the summary, the best adapter of each kind per tap, and (``every_adapter``)
    every adapter by validation accuracy."""
    adapters = _adapters(results)
    parts = [
        "## Summary",
        _summary_table(results, adapters),
        "## Accuracy by layer",
        _per_layer_table(results, adapters),
    ]
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


def write_report(results: Mapping[str, Any], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``out_dir/report.md`` and ``out_dir/accuracy_by_layer.png``; return both paths."""
    out_dir = Path(out_dir)
    png = plot_accuracy_by_layer(results, out_dir / "accuracy_by_layer.png")
    run = results.get("run", {})
    title = f"# inca: {run.get('backbone', {}).get('name', '?')} on {run.get('data', '?')}"
    md = "\n\n".join([title, run_summary(results), f"![accuracy by layer]({png.name})"])
    md += "\n\n" + results_table(results)
    md_path = out_dir / "report.md"
    with atomic_write(md_path) as tmp:
        tmp.write_text(md)
    return md_path, png
