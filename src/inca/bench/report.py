"""How ``inca bench`` shows its measurements: the targets table and the epoch-time curve."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from inca.report.format import markdown_table

TARGETS = {"R1": ("<=", 1.15), "R2": ("<=", 0.05), "R3": (">=", 10.0), "R4": ("<=", 1.3)}


def format_table(res: dict[str, Any]) -> str:
    what = {
        "R1": "online epoch / extraction epoch",
        "R2": "cached epoch / extraction epoch",
        "R3": "separate runs / one-to-many",
        "R4": "peak RSS training / extraction",
    }
    ratios = [
        [
            f"{k}: {what[k]}",
            f"{res['ratios'][k]:.3f}",
            f"{op} {v}",
            "yes" if res["met"][k] else "no",
        ]
        for k, (op, v) in TARGETS.items()
    ]
    curve = [
        [
            row["adapters"],
            f"{row['online_s']:.2f}",
            f"{row['cached_s']:.3f}",
            f"{row['online_vs_extraction']:.3f}",
            f"{row['cached_vs_extraction']:.4f}",
        ]
        for row in res["curve"]
    ]
    lines = [
        markdown_table(["ratio", "measured", "target", "met"], ratios),
        "",
        markdown_table(
            [
                "adapters",
                "online epoch (s)",
                "cached epoch (s)",
                "online / extraction",
                "cached / extraction",
            ],
            curve,
        ),
    ]
    if cost := res.get("cached_cost"):
        lines += ["", cost_table(cost, res)]
    if len(res["curve"]) > 1:
        lines += ["", limits_table(res)]
    bb = [
        [s, f"{v['fp32']:.1f}", f"{v['bf16']:.1f}"] for s, v in res["backbone_images_per_s"].items()
    ]
    lines += ["", markdown_table(["backbone", "fp32 img/s", "bf16 img/s"], bb)]
    ad = res["adapter_stack_images_per_s"]
    lines += [
        "",
        f"12 stacked InCA adapters, forward+backward, fp32: plain {ad['plain']:.0f} "
        f"img/s, folded {ad['folded']:.0f} img/s ({ad['folded'] / ad['plain']:.1f}x)",
    ]
    return "\n".join(lines)


def cost_table(cost: list[dict[str, Any]], res: dict[str, Any]) -> str:
    """The unit cost of cached training beside the FLOP and byte model (``flop_model``): what
    share of the matmul peak the adapters' FLOPs reach, and of the roofline (FLOPs at the peak
    plus the weights' and activations' bytes at the copy bandwidth)."""
    rows = []
    for r in cost:
        rows.append([
            r["what"],
            f"{r['us_per_image_per_adapter']:.1f}",
            f"{r['achieved_gflops']:.0f}" if "achieved_gflops" in r else "",
            f"{100 * r['share_of_bf16_peak']:.0f}%" if "share_of_bf16_peak" in r else "",
            f"{100 * r['share_of_roofline']:.0f}%" if "share_of_roofline" in r else "",
            f"{r['model_mb_per_step']:.0f}" if "model_mb_per_step" in r else "",
        ])  # fmt: skip
    table = markdown_table(
        [
            "cached epoch of",
            "us per image per adapter",
            "GFLOP/s (model)",
            "of bf16 peak",
            "of roofline",
            "MB per step (weights)",
        ],  # fmt: skip
        rows,
    )
    peak = res.get("gemm_peak_gflops", {}).get("bf16", {}).get("square_2048")
    bandwidth = res.get("copy_gbytes_per_s")
    if peak and bandwidth:
        table += (f"\n\nMeasured here: bf16 matmul peak {peak:.0f} GFLOP/s (2048² square), copy "
                  f"bandwidth {bandwidth:.1f} GB/s (read + write).")  # fmt: skip
    return table


def limits_table(res: dict[str, Any]) -> str:
    """The figures issue 29 set goals for, from this run: R2, the unit cost at 64 adapters
    and the online epoch's growth from 16 to 64 adapters."""
    by = {r["adapters"]: r for r in res["curve"]}
    rows = [["R2: cached epoch / extraction epoch", f"{res['ratios']['R2']:.3f}", "<= 0.05"]]
    if 64 in by:
        n = res.get("setup", {}).get("curve_images")
        if n:
            us = 1e6 * by[64]["cached_s"] / (n * 64)
            rows.append(["cached training, us per image per adapter (64 adapters)", f"{us:.1f}",
                         ">= 50% of the bf16 matmul peak"])  # fmt: skip
    if 16 in by and 64 in by:
        growth = by[64]["online_s"] / by[16]["online_s"] - 1
        rows.append(["online epoch, 16 -> 64 adapters", f"{100 * growth:+.0f}%",
                     "flat within 20%"])  # fmt: skip
    return markdown_table(["figure", "measured", "goal"], rows)


def plot_curve(curve: list[dict], extraction_s: float, path: Path, setup: dict) -> None:
    from inca.report.plot import new_figure, save_png

    fig = new_figure(7, 4.5, dpi=150)
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
    save_png(fig, path)
