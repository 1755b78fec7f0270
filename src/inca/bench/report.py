"""How ``inca bench`` shows its measurements: the targets table and the epoch-time curve."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TARGETS = {"R1": ("<=", 1.15), "R2": ("<=", 0.05), "R3": (">=", 10.0), "R4": ("<=", 1.3)}


def format_table(res: dict[str, Any]) -> str:
    lines = ["| ratio | measured | target | met |", "|---|---|---|---|"]
    what = {
        "R1": "online epoch / extraction epoch",
        "R2": "cached epoch / extraction epoch",
        "R3": "separate runs / one-to-many",
        "R4": "peak RSS training / extraction",
    }
    for k, (op, v) in TARGETS.items():
        lines.append(
            f"| {k}: {what[k]} | {res['ratios'][k]:.3f} | {op} {v} | "
            f"{'yes' if res['met'][k] else 'no'} |"
        )
    lines += [
        "",
        "| adapters | online epoch (s) | cached epoch (s) | online / extraction | "
        "cached / extraction |",
        "|---|---|---|---|---|",
    ]
    for row in res["curve"]:
        lines.append(
            f"| {row['adapters']} | {row['online_s']:.2f} | {row['cached_s']:.3f} | "
            f"{row['online_vs_extraction']:.3f} | {row['cached_vs_extraction']:.4f} |"
        )
    if cost := res.get("cached_cost"):
        lines += ["", "| cached epoch of | us per image per adapter |", "|---|---|"]
        lines += [f"| {r['what']} | {r['us_per_image_per_adapter']:.1f} |" for r in cost]
    bb = res["backbone_images_per_s"]
    lines += ["", "| backbone | fp32 img/s | bf16 img/s |", "|---|---|---|"]
    lines += [f"| {s} | {v['fp32']:.1f} | {v['bf16']:.1f} |" for s, v in bb.items()]
    ad = res["adapter_stack_images_per_s"]
    lines += [
        "",
        f"12 stacked InCA adapters, forward+backward, fp32: plain {ad['plain']:.0f} "
        f"img/s, folded {ad['folded']:.0f} img/s ({ad['folded'] / ad['plain']:.1f}x)",
    ]
    return "\n".join(lines)


def plot_curve(curve: list[dict], extraction_s: float, path: Path, setup: dict) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=150)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    xs = [r["adapters"] for r in curve]
    ax.plot(xs, [r["online_s"] for r in curve], "o-", label="one-to-many, online")
    ax.plot(xs, [r["cached_s"] for r in curve], "s-", label="one-to-many, from the cache")
    ax.axhline(extraction_s, color="grey", ls=":", label="tap extraction alone")
    ax.plot(
        xs,
        [extraction_s * x for x in xs],
        "--",
        color="tab:red",
        alpha=0.6,
        label="separate runs, each a full backbone pass (extraction x adapters)",
    )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("adapters trained")
    ax.set_ylabel("epoch time (s)")
    ax.set_title(f"{setup['model']}, {setup['image_size']} px, {setup['device']}: epoch time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    from inca.utils.io import atomic_write

    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png")
