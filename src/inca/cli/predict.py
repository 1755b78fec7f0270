"""`inca predict TASK... IMAGE...`: labels of images for one or more tasks, one pass of each
backbone they read (tasks on several backbones, and combined tasks, are fine).

A folder, more than ``TABLE_MAX_IMAGES`` images, or ``--out`` writes a CSV (one row per image:
each task's class and every class's probability;
``inca.tasks.predict_images.write_predictions_csv``), by
default ``predictions.csv`` in the current directory; unreadable images there are skipped with
a warning that lists them. A few single images print a table instead, and an unreadable one is
an error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from inca.cli.options import positive_int
from inca.errors import IncaError

TABLE_MAX_IMAGES = 20  # more single images than this go to a CSV, as a folder does
DEFAULT_CSV = "predictions.csv"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="predict images with one or more tasks, one pass (folders: a CSV)",
        description=(
            "Predict images with one or more saved tasks, one pass of each backbone for all the "
            "tasks on it (a combined task runs each of its backbones). A folder, "
            f"more than {TABLE_MAX_IMAGES} images or --out write a CSV (path, then per task "
            "'<task>:class' and '<task>:p:<class>' for every class), skipping unreadable images "
            "with a warning; a few single images print a table."
        ),
    )
    p.add_argument("paths", nargs="+", help="task directories, then image files or folders")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"write the CSV here (default with a folder: ./{DEFAULT_CSV})",
    )
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--precision", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from inca.tasks import load_task
    from inca.tasks.by_backbone import MultiBackbone
    from inca.tasks.predict_images import (
        format_predictions,
        image_files,
        iter_predictions,
        write_predictions_csv,
    )

    tasks = [p for p in args.paths if (Path(p) / "task.json").is_file()]
    images = [p for p in args.paths if p not in tasks]
    if not tasks or not images:
        raise IncaError(
            "give one or more task directories (with task.json), then images or "
            "folders of images: inca predict TASK... IMAGE..."
        )
    files = image_files(images)  # before loading the tasks: a wrong path fails fast
    folders = [p for p in images if Path(p).expanduser().is_dir()]
    out = args.out.expanduser() if args.out is not None else None
    if out is None and (folders or len(files) > TABLE_MAX_IMAGES):
        out = Path(DEFAULT_CSV)
    if out is not None and out.is_dir():
        raise IncaError(f"--out {out} is a folder; give a file name such as {out / DEFAULT_CSV}")

    multi = MultiBackbone([load_task(t) for t in tasks], args.device, args.precision)
    progress = not args.no_progress
    if out is None:  # a few single images: a table, an unreadable one is an error
        rows = list(iter_predictions(multi, files, args.batch_size, progress=progress))
        print(format_predictions(rows, multi.task_names))
        return

    skipped = []
    rows = iter_predictions(multi, files, args.batch_size, progress=progress, skipped=skipped)
    root = folders[0] if images == folders and len(folders) == 1 else None
    n = write_predictions_csv(out, rows, multi, relative_to=root)
    if skipped:
        listed = "\n".join(f"  {e.path}: {e.reason}" for e in skipped)
        print(
            f"inca: warning: skipped {len(skipped)} unreadable image(s), no row for them:\n"
            f"{listed}",
            file=sys.stderr,
        )
    note = f"; {len(skipped)} unreadable image(s) skipped (no row)" if skipped else ""
    print(
        f"wrote {out.resolve()}: {n} image(s) x {len(multi.task_names)} task(s) "
        f"({', '.join(multi.task_names)}){note}"
    )
