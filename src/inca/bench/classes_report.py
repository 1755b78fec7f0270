"""The class-incremental protocol as a report: per data set, accuracy over the classes seen after
each step as mean ± std over class orders, one row per method; the references and the targets
below; and a plot of the steps."""

from __future__ import annotations

from pathlib import Path
from statistics import mean, pstdev
from typing import Any

from inca.report.format import markdown_table

ROWS = {
    "analytic": "Open-InCA, analytic head (default): descriptors + ridge from statistics",
    "queries": "Open-InCA, trained queries (before), no replay",
    "random_ridge": "random features + ridge (RanPAC-style), CLS + mean",
    "class_means": "class means, cosine (SimpleCIL-style), CLS + mean",
}
MARGIN = 0.5  # points the analytic head must clear the best anchor by (issue 28)


def step_values(protocol: dict[str, Any], key: str) -> list[list[float]] | None:
    """Per step, the row's accuracy in each order (None where the row was not run)."""
    runs = protocol["runs"]
    if key == "queries":
        if "queries" not in runs[0]:
            return None
        return [list(v) for v in zip(*(r["queries"] for r in runs), strict=True)]
    return [[r["steps"][i][key] for r in runs] for i in range(len(runs[0]["steps"]))]


def pm(values: list[float]) -> str:
    return f"{100 * mean(values):.2f} ± {100 * pstdev(values):.2f}"


def protocol_table(protocol: dict[str, Any]) -> str:
    steps = protocol["runs"][0]["steps"]
    header = ["method", *(f"step {i + 1} ({s['classes']} classes)" for i, s in enumerate(steps))]
    rows = []
    for key, label in ROWS.items():
        values = step_values(protocol, key)
        if values is not None:
            rows.append([label, *(pm(v) for v in values)])
    return markdown_table(header, rows)


def protocol_notes(name: str, p: dict[str, Any]) -> list[str]:
    """The references and the targets under a protocol's table."""
    final = {k: step_values(p, k)[-1] for k in ROWS if step_values(p, k) is not None}
    best_anchor = max(mean(final["random_ridge"]), mean(final["class_means"]))
    analytic = mean(final["analytic"])
    j = p["joint_ridge"]
    orders = "; ".join(", ".join(r["order"]) for r in p["runs"])
    lines = [
        f"{name}: {p['sizes'][0]:,} / {p['sizes'][1]:,} / {p['sizes'][2]:,} images (train / val "
        f"/ test), {len(p['runs'])} class orders ({orders}).",
        f"- Joint ridge on the same descriptors, all classes at once: {100 * j['test_acc']:.2f}%; "
        f"every order's final analytic head equals it to {j['max_relative_difference']:.1e} "
        "(largest weight difference over the largest weight).",
    ]  # fmt: skip
    if "merge" in p:
        m = p["merge"]
        lines.append(
            f"- Two halves made apart (`classes new`) and merged (`classes merge`, no "
            f"calibration needed): {100 * m['test_acc']:.2f}%, equal to the joint head to "
            f"{m['max_relative_difference']:.1e}."
        )
    if "joint_inca" in p:
        lines.append(f"- Joint InCA (a cross-attention adapter trained on every class at once): "
                     f"{100 * p['joint_inca']['test_acc']:.2f}%.")  # fmt: skip
    lines.append(
        f"- Target, after the last step: the analytic head at least {MARGIN} points above the "
        f"best anchor ({100 * best_anchor:.2f}%): {100 * analytic:.2f}% "
        f"({'met' if 100 * (analytic - best_anchor) >= MARGIN else 'NOT met'})"
        + (
            f"; within 1 point of joint InCA or above it: "
            f"{'met' if 100 * (analytic - p['joint_inca']['test_acc']) >= -1 else 'NOT met'}."
            if "joint_inca" in p
            else "."
        )
    )
    return lines


def classes_report(res: dict[str, Any]) -> str:
    s = res["setup"]
    parts = [
        f"{s['model']} at {s['image_size']} px, tap {s['tap']}; {s['steps']} steps, each on "
        "its own classes' training images only (no replay); test accuracy over every class "
        "seen so far, mean ± std over class orders (%)."
    ]
    for name, p in res["protocols"].items():
        parts += ["", f"## {name}", "", protocol_table(p), "", *protocol_notes(name, p)]
    return "\n".join(parts)


def plot_steps(res: dict[str, Any], path: Path) -> None:
    """Accuracy over every class seen, after each step: one panel per data set, a line per
    method (mean over orders, std as error bars)."""
    from inca.report.plot import new_figure, save_png

    protocols = res["protocols"]
    fig = new_figure(5.2 * len(protocols), 4.0)
    for i, (name, p) in enumerate(protocols.items()):
        ax = fig.add_subplot(1, len(protocols), i + 1)
        for color, (key, label) in enumerate(ROWS.items()):
            values = step_values(p, key)
            if values is None:
                continue
            steps = list(range(1, len(values) + 1))
            ax.errorbar(steps, [100 * mean(v) for v in values],
                        yerr=[100 * pstdev(v) for v in values], fmt="o-", ms=4, capsize=3,
                        color=f"C{color}", label=label.split(":")[0])  # fmt: skip
        if "joint_inca" in p:
            ax.axhline(100 * p["joint_inca"]["test_acc"], color="k", ls="--", lw=1,
                       label="joint InCA")  # fmt: skip
        ax.set_title(name)
        ax.set_xlabel("step (new classes each)")
        ax.set_ylabel("test accuracy over classes seen (%)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize=7)
    save_png(fig, path, dpi=110, bbox_inches="tight")
