"""`inca predict TASK... IMAGE...`: labels of images for one or more tasks, one backbone pass."""

from __future__ import annotations

import argparse
from pathlib import Path

from inca.cli.options import positive_int
from inca.errors import IncaError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="predict images with one or more tasks, one pass")
    p.add_argument("paths", nargs="+", help="task directories, then image files or folders")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--precision", default="auto")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from inca.predict import format_predictions, predict_images
    from inca.tasks import MultiTask, load_task

    tasks = [p for p in args.paths if (Path(p) / "task.json").is_file()]
    images = [p for p in args.paths if p not in tasks]
    if not tasks or not images:
        raise IncaError(
            "give one or more task directories (with task.json), then images or "
            "folders of images: inca predict TASK... IMAGE..."
        )
    multi = MultiTask([load_task(t) for t in tasks], device=args.device, precision=args.precision)
    rows = predict_images(multi, images, batch_size=args.batch_size)
    print(format_predictions(rows, multi.task_names))
