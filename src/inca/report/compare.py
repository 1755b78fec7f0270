"""The report of `inca compare`: a table, and validation accuracy against cumulative wall time.

The question it answers: what accuracy does each method reach, and what did that cost? Cost is
wall time on this machine for the method's whole search (its learning-rate sweep, its grid),
including the activation cache a frozen-feature method trains from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from inca.methods import get_method
from inca.report.format import _pct, markdown_table
from inca.report.plot import new_figure, save_png
from inca.utils.device import machine_label
from inca.utils.io import atomic_write


def runs(row: dict[str, Any]) -> int:
    """Training runs behind a row: 1 for one-to-many methods, one per swept rate otherwise."""
    if row.get("runs"):
        return row["runs"]
    method = get_method(row["method"].removesuffix("-ensemble"))  # rows made before "runs"
    return 1 if method.one_pass else max(1, len(row["sweep"]))


def memory_cell(row: dict[str, Any]) -> str:
    """Peak resident memory of the method's process (the largest rank's, with how many ranks
    ran it under torchrun), and the accelerator's peak where it ran on CUDA."""
    cell = f"{row['peak_rss_mib']:.0f}"
    if "peak_gpu_mib" in row:
        cell += f" (GPU {row['peak_gpu_mib']:.0f})"
    ranks = len(row.get("peak_memory_per_rank") or [])
    return cell + (f" per rank, max of {ranks}" if ranks > 1 else "")


BALANCED_GAP = 0.01  # accuracy this far above balanced accuracy: the classes' sizes matter


def balanced(rows: list[dict[str, Any]]) -> bool:
    """Whether the rows are judged by balanced accuracy (the mean recall per class): selection
    ranked by it (``--metric balanced-accuracy``), or a test set so imbalanced that some row's
    accuracy stands a point or more above it, flattered by the majority class."""
    if any(r.get("metric") == "balanced-accuracy" for r in rows):
        return True
    gaps = [r["test_acc"] - r["test_balanced_acc"] for r in rows if "test_balanced_acc" in r]
    return bool(gaps) and max(gaps) >= BALANCED_GAP


def score(row: dict[str, Any], split: str, by_balanced: bool) -> float:
    """A row's ``split`` ("val" or "test") score: balanced accuracy where the table is judged
    by it and the row has it (rows made before it was recorded: accuracy), else accuracy."""
    key = f"{split}_balanced_acc"
    return row[key] if by_balanced and key in row else row[f"{split}_acc"]


def compare_table(summary: dict[str, Any]) -> str:
    """The table, best test score first, and the decision line under it. Wall times compare
    only on one machine: rows from another machine than full fine-tuning's get no time ratio,
    and a machine column says which machine each row ran on whenever they ran on more than
    one. On imbalanced data the balanced accuracies join the table and rank it."""
    rows = summary["rows"]
    by_bal = balanced(rows)
    full = next((r for r in rows if r["method"] == "full"), None)
    label = {id(r): machine_label(r.get("machine")) for r in rows}
    mixed = len(set(label.values())) > 1
    where = (
        "Rows ran on different machines (column machine): wall times compare only within one."
        if mixed
        else f"Measured on one machine: {next(iter(label.values()), '?')}."
    )
    note = (
        f"Budget: {summary['budget']}; selection on validation, test computed once. Wall time "
        "covers the method's whole search (learning-rate sweep or adapter grid) and, for "
        f"frozen-feature methods, building the activation cache; per run, one configuration. "
        f"{where}"
    )
    if by_bal:
        note += (" The data are imbalanced: rows are ranked by balanced accuracy (the mean "
                 "recall per class), which accuracy overstates here.")  # fmt: skip
    header = [
        "method", *(["test bal. acc", "val bal. acc"] if by_bal else []), "test acc", "val acc",
        "epochs run", "wall time (s)", "per run (s)", "peak memory (MiB)", "trainable params",
        "stored task", "selected", *(["test vs full", "time vs full"] if full else []),
        *(["machine"] if mixed else []),
    ]  # fmt: skip
    table = []
    for r in sorted(rows, key=lambda r: -score(r, "test", by_bal)):
        row = [
            r["method"],
            *([_pct(r.get("test_balanced_acc")), _pct(r.get("val_balanced_acc"))] if by_bal
              else []),
            _pct(r["test_acc"]), _pct(r["val_acc"]), r.get("epochs", "—"),
            f"{r['train_time_s']:.0f}", f"{r['train_time_s'] / runs(r):.0f}", memory_cell(r),
            f"{r['trainable_params']:,}", f"{r['task_bytes'] / 2**20:.2f} MiB", r["selected"],
        ]  # fmt: skip
        if full:
            same = label[id(r)] == label[id(full)]
            ratio = f"{r['train_time_s'] / full['train_time_s']:.0%}" if same else "other machine"
            gain = score(r, "test", by_bal) - score(full, "test", by_bal)
            row += [f"{100 * gain:+.2f} pp", ratio]
        if mixed:
            row.append(label[id(r)])
        table.append(row)
    text = note + "\n\n" + markdown_table(header, table)
    return text + ("\n\n" + line if (line := decision_line(rows)) else "")


DECISION_MARGIN = 0.005  # "as good": within half a point of the best validation score


def decision(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The row with the best validation score (balanced accuracy where the table is judged by
    it), and the cheapest (wall time) whose validation score is within ``DECISION_MARGIN`` of
    it (the best itself when none is cheaper), among the rows timed on the best's machine.
    Test scores decide nothing: they are read once, after."""
    if not rows:
        return None
    by_bal = balanced(rows)
    val = {id(r): score(r, "val", by_bal) for r in rows}
    best = max(rows, key=lambda r: (val[id(r)], -r["train_time_s"]))
    where = machine_label(best.get("machine"))
    close = [r for r in rows if val[id(r)] >= val[id(best)] - DECISION_MARGIN - 1e-12
             and machine_label(r.get("machine")) == where]  # fmt: skip
    return best, min(close, key=lambda r: (r["train_time_s"], -val[id(r)]))


def decision_line(rows: list[dict[str, Any]]) -> str:
    """The answer the comparison is run for, in one line under the table."""
    picked = decision(rows)
    if picked is None:
        return ""
    best, cheap = picked
    by_bal = balanced(rows)
    what = "balanced accuracy" if by_bal else "accuracy"

    def said(r: dict[str, Any]) -> str:
        return (f"**{r['method']}** (validation {100 * score(r, 'val', by_bal):.2f}%, test "
                f"{100 * score(r, 'test', by_bal):.2f}%, {r['train_time_s']:.0f} s)")  # fmt: skip

    line = f"Decision ({what}): the best on validation is {said(best)}"
    if cheap is best:
        return line + f"; no method within {100 * DECISION_MARGIN:.1f} points costs less."
    return (
        line + f"; the cheapest within {100 * DECISION_MARGIN:.1f} points of it is {said(cheap)}, "
        f"{cheap['train_time_s'] / best['train_time_s']:.2f}x its time."
    )


def plot_cost(summary: dict[str, Any], path: Path) -> Path:
    """One curve per method: best validation accuracy so far against cumulative wall time; a
    star at the end marks the selected point's *test* accuracy. Methods whose runs kept no
    per-epoch times appear as their final point only."""
    fig = new_figure(8, 5, dpi=150)
    ax = fig.add_subplot()
    labels = [machine_label(r.get("machine")) for r in summary["rows"]]
    machines = list(dict.fromkeys(labels))  # in order of first appearance
    tag = {m: f" [{chr(65 + k)}]" for k, m in enumerate(machines)} if len(machines) > 1 else {}
    for i, r in enumerate(summary["rows"]):
        color = f"C{i % 10}"
        curve = r.get("curve") or []
        if curve:
            xs = [p["seconds"] for p in curve]
            ys = [100 * p["val_acc"] for p in curve]
            ax.plot(xs, ys, "-", color=color, alpha=0.8, lw=1.5)
        end = r["train_time_s"]
        ax.plot([end], [100 * r["val_acc"]], "o", color=color, ms=5)
        ax.plot([end], [100 * r["test_acc"]], "*", color=color, ms=13, markeredgecolor="black")
        ax.annotate(
            f"{r['method']} {100 * r['test_acc']:.2f}%{tag.get(labels[i], '')}",
            (end, 100 * r["test_acc"]),
            textcoords="offset points",
            xytext=(6, -10 if i % 2 else 4),
            fontsize=8,
            color=color,
        )
    ax.set_xscale("log")
    ax.set_xlabel("cumulative wall time (s): whole sweep or grid, activation cache included")
    ax.set_ylabel("accuracy (%): lines = best validation so far, ★ = selected, test")
    o = summary["options"]
    ax.set_title(f"{o['model']} on {o['data']}: what each method reaches, and at what cost")
    ax.grid(alpha=0.3, which="both")
    lows = [100 * p["val_acc"] for r in summary["rows"] for p in (r.get("curve") or [])]
    highs = [100 * r["test_acc"] for r in summary["rows"]]
    if highs:  # the interesting band: early epochs of slow methods would squash it
        top = max(highs + lows)
        ax.set_ylim(max(min(highs) - 6, min(lows + highs) - 1), top + 1)
    if tag:  # times from two machines share the axis only for lack of room: say so
        note = "; ".join(f"[{chr(65 + k)}] {m}" for k, m in enumerate(machines))
        fig.text(0.01, 0.005, f"ran on: {note}. Times from different machines do not compare.",
                 fontsize=7, va="bottom")  # fmt: skip
        fig.tight_layout(rect=(0, 0.03, 1, 1))
    else:
        fig.tight_layout()
    return save_png(fig, path)


def write_compare_report(summary: dict[str, Any], out: Path) -> tuple[Path, Path]:
    png = plot_cost(summary, Path(out) / "accuracy_vs_cost.png")
    md = Path(out) / "compare.md"
    o = summary["options"]
    text = (
        f"# {o['model']} on {o['data']}: method comparison\n\n"
        f"{o['train_size']} training images, {o['image_size']} px.\n\n"
        f"{compare_table(summary)}\n\n![accuracy vs cost]({png.name})\n"
    )
    with atomic_write(md) as tmp:
        tmp.write_text(text)
    return md, png
