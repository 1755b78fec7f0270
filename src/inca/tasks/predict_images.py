"""Predict image files with every loaded task: the library side of ``inca predict``.

Each row of the result is one image::

    {"path": "photos/cat.jpg",
     "predictions": {"pets": {"label": "cat", "index": 3, "prob": 0.91,
                              "probs": [0.02, 0.01, 0.06, 0.91]}, ...}}

(predictions nested under their own key, so a task may be called anything, "path" included;
``probs`` holds every class's probability, in the task's class order).

``write_predictions_csv`` writes rows as a CSV, one line per image::

    path,pets:class,pets:p:cat,pets:p:dog,weather:class,weather:p:sunny,...
    0.png,dog,0.0731,0.9269,sunny,...

Columns always carry the task's name (also with one task), so a script reads the same
columns whatever tasks ran beside it.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from inca.data import IMAGE_EXTENSIONS, images_in
from inca.data.preprocess import ImageTransform
from inca.errors import IncaError
from inca.tasks import MultiTask
from inca.tasks.by_backbone import MultiBackbone
from inca.utils.io import atomic_write

Row = dict[str, Any]


class UnreadableImage(IncaError):
    """An image file that cannot be decoded or preprocessed; ``path`` and ``reason`` say which
    and why."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(
            f"cannot read image {path} ({reason}); remove it or replace it with a valid image"
        )


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
    """The decoded image; an unreadable file is an ``UnreadableImage`` (an ``IncaError``) that
    names it."""
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()  # detached from the file, which the `with` closes
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise UnreadableImage(path, str(e)) from None


Predictor = MultiTask | MultiBackbone


def _pixels(path: Path, transforms: Sequence[ImageTransform]) -> list[torch.Tensor]:
    """[(3, S, S) per backbone]: the image decoded once and preprocessed for each backbone;
    ``UnreadableImage`` if it cannot be."""
    img = open_image(path)
    try:
        return [t(img) for t in transforms]
    except IncaError as e:  # e.g. a float image with values no scaling explains
        raise UnreadableImage(path, str(e)) from None


def _transforms(predictor: Predictor) -> list[ImageTransform]:
    if isinstance(predictor, MultiTask):
        return [ImageTransform(predictor.backbone.preprocess)]
    return predictor.transforms


def iter_predictions(
    multitask: Predictor,
    files: Sequence[Path],
    batch_size: int = 32,
    *,
    progress: bool = False,
    skipped: list[UnreadableImage] | None = None,
) -> Iterator[Row]:
    """Rows (see the module docstring) of ``files``, in order, a batch at a time.

    Each batch is one pass of each backbone for all tasks on it (``MultiTask`` for one
    backbone, ``MultiBackbone`` for several, combined tasks included). An unreadable
    file raises ``UnreadableImage``, or, when ``skipped`` is a list, is appended to it and
    gets no row; if every file is unreadable, that is an ``IncaError``. ``progress``: a bar
    over images (on stderr).
    """
    if batch_size < 1:
        raise IncaError(f"batch size must be at least 1, got {batch_size}")
    transforms = _transforms(multitask)
    bar = tqdm(total=len(files), desc="predict", unit="img", disable=not progress)
    try:
        batch: list[tuple[Path, list[torch.Tensor]]] = []
        seen = 0  # files read since the bar last moved, skipped ones included
        unread: list[UnreadableImage] = []
        for i, f in enumerate(files):
            try:
                batch.append((f, _pixels(f, transforms)))
            except UnreadableImage as e:
                if skipped is None:
                    raise
                skipped.append(e)
                unread.append(e)
            seen += 1
            if len(batch) == batch_size or i == len(files) - 1:
                yield from _predict_batch(multitask, batch)
                bar.update(seen)
                batch, seen = [], 0
    finally:
        bar.close()
    if files and len(unread) == len(files):
        raise IncaError(
            f"none of the {len(files)} images could be read (the first: {unread[0].path}: "
            f"{unread[0].reason}); point at image files"
        )


def _predict_batch(multitask: Predictor, batch: list[tuple[Path, list[torch.Tensor]]]
                   ) -> list[Row]:  # fmt: skip
    if not batch:
        return []
    views = [torch.stack([x[j] for _, x in batch]) for j in range(len(batch[0][1]))]
    pixels = views[0] if isinstance(multitask, MultiTask) else views  # (B, 3, S, S) each
    probs = {n: p.float().cpu() for n, p in multitask.predict_proba(pixels).items()}
    rows = []
    for i, (f, _) in enumerate(batch):
        preds = {}
        for name, p in probs.items():
            k = int(p[i].argmax())
            preds[name] = {
                "label": multitask.tasks[name].class_names[k],
                "index": k,
                "prob": float(p[i, k]),
                "probs": p[i].tolist(),
            }
        rows.append({"path": str(f), "predictions": preds})
    return rows


def predict_images(
    multitask: Predictor,
    paths: Sequence[str | os.PathLike],
    batch_size: int = 32,
    *,
    progress: bool = False,
    skipped: list[UnreadableImage] | None = None,
) -> list[Row]:
    """One row per image (see the module docstring), in the order of ``image_files(paths)``;
    ``progress`` and ``skipped`` as in ``iter_predictions``."""
    files = image_files(paths)
    return list(iter_predictions(multitask, files, batch_size, progress=progress, skipped=skipped))


def csv_header(multitask: Predictor) -> list[str]:
    """``path``, then per task ``<task>:class`` and ``<task>:p:<class>`` for every class."""
    header = ["path"]
    for name in multitask.task_names:
        header += [f"{name}:class"] + [f"{name}:p:{c}" for c in multitask.tasks[name].class_names]
    repeated = sorted(h for h, n in Counter(header).items() if n > 1)
    if repeated:
        raise IncaError(
            f"the CSV would have repeated columns {repeated} (task and class names with ':' "
            "run together); rename a task (task.name = ..., or the 'name' field of its task.json)"
        )
    return header


def write_predictions_csv(
    path: str | os.PathLike,
    rows: Iterable[Row],
    multitask: Predictor,
    relative_to: str | os.PathLike | None = None,
) -> int:
    """Write ``rows`` (consumed as they come) as a CSV at ``path``, atomically: the file appears,
    complete, only once every row is written; an error or Ctrl-C leaves any older file as it
    was. Paths are relative to ``relative_to`` (with "/") when given. Returns the row count."""
    header = csv_header(multitask)  # before any image is read: a naming error costs nothing
    root = Path(relative_to).expanduser() if relative_to is not None else None
    n = 0
    with atomic_write(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        for row in rows:
            where = Path(row["path"])
            cells = [where.relative_to(root).as_posix() if root is not None else row["path"]]
            for name in multitask.task_names:
                pred = row["predictions"][name]
                cells += [pred["label"]] + [f"{p:.6g}" for p in pred["probs"]]
            writer.writerow(cells)
            n += 1
    return n


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
