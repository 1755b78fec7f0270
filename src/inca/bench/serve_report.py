"""How ``inca bench-serve`` shows its measurements: throughput and latency, where a request's
time goes, load time and memory per task count, the targets."""

from __future__ import annotations

from typing import Any

from inca.report.format import markdown_table

STAGE_NAMES = {
    "read": "read",
    "decode_wait": "decode wait",
    "decode": "decode",
    "queue": "queue",
    "pass": "pass",
    "compute": "(its share)",
    "reply": "reply",
}


def at(row: dict, clients: int) -> float:
    """The row's images/s with ``clients`` clients."""
    return next(m["images_per_s"] for m in row["shared"] if m["clients"] == clients)


def serve_table(res: dict[str, Any]) -> str:
    """Markdown: throughput and latency, where a request's time goes, load time and memory
    per task count, the targets. Reads results of older versions too (fewer tables)."""
    header = ["tasks", "clients", "images/s", "p50 ms", "p95 ms", "p99 ms",
              "one pass per task (img/s)", "inca predict offline (img/s)"]  # fmt: skip
    rows = []
    for row in res["rows"]:
        base = row.get("pass_per_task")
        for m in row["shared"]:
            last = m is row["shared"][-1]
            per_task = f"{base['images_per_s']:.1f}" if base and last else ""
            off = f"{row['offline_images_per_s']:.1f}" if last else ""
            rows.append([row["tasks"], m["clients"], f"{m['images_per_s']:.1f}",
                         f"{m['p50_ms']:.0f}", f"{m['p95_ms']:.0f}", f"{m['p99_ms']:.0f}",
                         per_task, off])  # fmt: skip
    most = res["rows"][0]["shared"][-1]
    lines = [
        markdown_table(header, rows),
        "",
        f"At {most['clients']} clients and {res['rows'][0]['tasks']} task(s) the server "
        f"spent {100 * most['server_busy_share']:.0f}% of the time in backbone passes "
        f"({most['pass_ms_per_image']:.1f} ms per image; offline "
        f"{1e3 / res['rows'][0]['offline_images_per_s']:.1f} ms per image, decoding "
        f"included), while the load generator itself used "
        f"{most['client_cpu_cores']:.2f} of the machine's {res['setup']['cpus']} cores.",
    ]
    stages = stage_table(res)
    if stages:
        lines += ["", stages]
    if "memory" in res:
        lines += ["", memory_table(res)]
    lines.append("")
    for k, v in res["ratios"].items():
        lines.append(f"- {k.replace('_', ' ')}: {v:.3f} (target >= {res['targets'][k]}: "
                     f"{'met' if res['met'][k] else 'NOT met'})")  # fmt: skip
    return "\n".join(lines)


def stage_table(res: dict[str, Any]) -> str:
    """Where a request's time goes at the most clients, per task count (mean ms per request,
    from the server's /metrics); "other" is the client's mean latency minus the server's
    stages: HTTP parsing and sending, waiting for the event loop, the client itself."""
    rows = []
    for row in res["rows"]:
        m = row["shared"][-1]
        if "stages_ms" not in m:
            continue
        st = m["stages_ms"]
        inside = sum(v for k, v in st.items() if k != "compute")
        rows.append([row["tasks"], m["clients"], f"{m['mean_batch']:.1f}",
                     *(f"{st.get(k, 0.0):.1f}" for k in STAGE_NAMES),
                     f"{m['mean_ms'] - inside:.1f}", f"{m['mean_ms']:.1f}"])  # fmt: skip
    if not rows:
        return ""
    header = ["tasks", "clients", "mean batch", *(f"{v} ms" for v in STAGE_NAMES.values()),
              "other ms", "latency ms"]  # fmt: skip
    return "Where a request's time goes (mean ms per request):\n\n" + markdown_table(header, rows)


def memory_table(res: dict[str, Any]) -> str:
    """Load time, resident memory and throughput at the most clients per task count."""
    one = next((r for r in res["rows"] if r["tasks"] == 1), res["rows"][0])
    most = one["shared"][-1]["clients"]
    rows = [[one["tasks"], f"{one['load_s']:.1f}", f"{one['rss_mib']:.0f}", "",
             f"{at(one, most):.1f}", "1.000"]]  # fmt: skip
    for r in res["rows"]:
        if r is one:
            continue
        mem = res["memory"][str(r["tasks"])]
        rows.append([r["tasks"], f"{r['load_s']:.1f}", f"{r['rss_mib']:.0f}",
                     f"{mem['mib_per_task']:.2f}", f"{at(r, most):.1f}",
                     f"{at(r, most) / at(one, most):.3f}"])  # fmt: skip
    header = ["tasks", "load s (start to ready)", "resident MiB", "MiB per extra task",
              f"images/s at {most} clients", "vs 1 task"]  # fmt: skip
    return markdown_table(header, rows)
