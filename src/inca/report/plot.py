"""One way to make and save a figure: matplotlib's object API on the Agg canvas (no display, no
global pyplot state, safe in servers and threads), written atomically as PNG."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inca.utils.io import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def new_figure(width: float, height: float, **options: Any) -> Figure:
    """A Figure of ``width`` x ``height`` inches on an Agg canvas (``options``: Figure's, such
    as ``dpi`` or ``layout="constrained"``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), **options)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, path: str | os.PathLike, **options: Any) -> Path:
    """``fig`` written to ``path`` as PNG, atomically (``options``: savefig's, e.g. ``dpi``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", **options)
    return path
