"""The report of `inca compare`: a table and accuracy against training cost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from inca.io import atomic_write

ONE_PASS = ("linear", "inca", "inca-ensemble")  # one training run covers the whole sweep


def runs(row: dict[str, Any]) -> int:
    """Training runs behind a row: 1 for one-to-many methods, one per swept rate otherwise."""
    return row.get("runs") or (1 if row["method"] in ONE_PASS else max(1, len(row["sweep"])))


def compare_table(summary: dict[str, Any]) -> str:
    full = next((r for r in summary["rows"] if r["method"] == "full"), None)
    vs = " | test vs full | time vs full" if full else ""
    lines = [
        f"Budget: {summary['budget']}; selection on validation, test computed once. Train time "
        "covers the method's whole learning-rate sweep; per run, one configuration.",
        "",
        "| method | test acc | val acc | train time (s) | per run (s) | peak memory (MiB) | "
        f"trainable params | stored task | selected{vs} |",
        "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if full else ""),
    ]
    for r in sorted(summary["rows"], key=lambda r: -r["test_acc"]):
        line = (
            f"| {r['method']} | {100 * r['test_acc']:.2f}% | {100 * r['val_acc']:.2f}% | "
            f"{r['train_time_s']:.0f} | {r['train_time_s'] / runs(r):.0f} | "
            f"{r['peak_rss_mib']:.0f} | {r['trainable_params']:,} | "
            f"{r['task_bytes'] / 2**20:.2f} MiB | {r['selected']} |"
        )
        if full:
            line += (
                f" {100 * (r['test_acc'] - full['test_acc']):+.2f} pp | "
                f"{r['train_time_s'] / full['train_time_s']:.0%} |"
            )
        lines.append(line)
    return "\n".join(lines)


def plot_cost(summary: dict[str, Any], path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=150)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for r in summary["rows"]:
        ax.scatter(r["train_time_s"], 100 * r["test_acc"], s=60)
        ax.annotate(
            r["method"],
            (r["train_time_s"], 100 * r["test_acc"]),
            textcoords="offset points",
            xytext=(6, 4),
            fontsize=9,
        )
    ax.set_xscale("log")
    ax.set_xlabel("training wall time (s, with the learning-rate sweep)")
    ax.set_ylabel("test accuracy (%)")
    o = summary["options"]
    ax.set_title(f"{o['model']} on {o['data']}: accuracy against training cost")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


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
