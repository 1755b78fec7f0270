"""How reports write numbers and tables: percentages, counts, markdown cells, durations."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

DASH = "—"


def _acc(value: Any) -> float | None:
    """An accuracy as a float, or None when missing or not finite (a diverged adapter)."""
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def _pct(value: Any) -> str:
    acc = _acc(value)
    return DASH if acc is None else f"{100 * acc:.2f}%"


def _int(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else DASH


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, int | float) else DASH


def _cell(text: Any) -> str:
    """Text safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _confusion_table(names: Sequence[str], matrix: Sequence[Sequence[int]]) -> str:
    """A confusion matrix as markdown: a row per true class, a column per predicted class, the
    diagonal (correct) counts in bold."""
    header = ["true \\ predicted", *(_cell(n) for n in names)]
    rows = [
        [f"**{n}**", *(f"**{c}**" if i == j else c for j, c in enumerate(row))]
        for i, (n, row) in enumerate(zip(names, matrix, strict=True))
    ]
    return markdown_table(header, rows)


def _share(params: int | None, backbone: Any) -> str:
    """Adapter parameters as a percentage of the backbone's (3 significant digits)."""
    if params is None or not isinstance(backbone, int) or backbone <= 0:
        return DASH
    return f"{100 * params / backbone:.3g}%"


# --- the tables ---------------------------------------------------------------------------


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "an unknown time"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"
