"""Predict image files with every loaded task: the library side of ``inca predict``.

Each row of the result is one image::

    {"path": "photos/cat.jpg",
     "predictions": {"pets": {"label": "cat", "index": 3, "prob": 0.91}, ...}}

(predictions nested under their own key, so a task may be called anything, "path" included).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from inca.data import IMAGE_EXTENSIONS, images_in
from inca.data.preprocess import ImageTransform
from inca.errors import IncaError
from inca.tasks import MultiTask

Row = dict[str, Any]


def image_files(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Files as given, folders expanded into their image files (recursively, sorted)."""
    out: list[Path] = []
    for p in paths:
        p = Path(p).expanduser()
        if p.is_dir():
            found = images_in(p)
            if not found:
                exts = ", ".join(sorted(IMAGE_EXTENSIONS))
                raise IncaError(f"folder {p} holds no image files ({exts}); point at images")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise IncaError(f"{p} does not exist; give image files or folders of images")
    if not out:
        raise IncaError("no images to predict; give image files or folders of images")
    return out


def open_image(path: Path) -> Image.Image:
    """The decoded image; an unreadable file is an ``IncaError`` that names it."""
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()  # detached from the file, which the `with` closes
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise IncaError(
            f"cannot read image {path} ({e}); remove it or replace it with a valid image"
        ) from None


def _batches(items: list[Path], size: int) -> Iterator[list[Path]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def predict_images(
    multitask: MultiTask, paths: Sequence[str | os.PathLike], batch_size: int = 32
) -> list[Row]:
    """One row per image (see the module docstring), in the order of ``image_files(paths)``.

    Images are read and preprocessed as the backbone asks, then each batch is one
    ``MultiTask`` pass: one backbone forward for all tasks.
    """
    if batch_size < 1:
        raise IncaError(f"batch size must be at least 1, got {batch_size}")
    files = image_files(paths)
    transform = ImageTransform(multitask.backbone.preprocess)
    rows: list[Row] = []
    for batch in _batches(files, batch_size):
        pixels = torch.stack([transform(open_image(f)) for f in batch])  # (B, 3, S, S)
        probs = {n: p.float().cpu() for n, p in multitask.predict_proba(pixels).items()}
        for i, f in enumerate(batch):
            preds = {}
            for name, p in probs.items():
                k = int(p[i].argmax())
                label = multitask.tasks[name].class_names[k]
                preds[name] = {"label": label, "index": k, "prob": float(p[i, k])}
            rows.append({"path": str(f), "predictions": preds})
    return rows


def format_predictions(rows: Sequence[Row], task_names: Sequence[str] | None = None) -> str:
    """An aligned text table: path, then each task's label and probability."""
    if task_names is None:
        task_names = list(rows[0]["predictions"]) if rows else []
    header = ["path"] + [h for t in task_names for h in (t, "prob")]
    body = [
        [r["path"]]
        + [
            cell
            for t in task_names
            for cell in (r["predictions"][t]["label"], f"{r['predictions'][t]['prob']:.3f}")
        ]
        for r in rows
    ]
    table = [header, *body]
    widths = [max(len(line[c]) for line in table) for c in range(len(header))]
    probs = {c for c in range(len(header)) if c and c % 2 == 0}  # right-aligned numbers
    return "\n".join(
        "  ".join(
            cell.rjust(w) if c in probs else cell.ljust(w)
            for c, (cell, w) in enumerate(zip(line, widths, strict=True))
        ).rstrip()
        for line in table
    )
