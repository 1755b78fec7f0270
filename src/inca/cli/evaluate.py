"""`inca eval RUN`: a run's saved tasks on a dataset split, one backbone pass for all of them.
The evaluation itself is the library's (inca.tasks.evaluate); this parses, calls, prints."""

from __future__ import annotations

import argparse
from pathlib import Path

from inca.cli.options import positive_int
from inca.errors import IncaError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="a run's saved tasks on a dataset split (one backbone pass)")
    p.add_argument("run", help="run directory (evaluates tasks/*) or one task directory")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument(
        "--data",
        default=None,
        help="another dataset with the same classes (default: the run's own data and split)",
    )
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--precision", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def task_dirs(path: str) -> list[str]:
    """A task directory, or a run directory's saved tasks (tasks/*/task.json)."""
    root = Path(path)
    if (root / "task.json").is_file():
        return [str(root)]
    found = sorted(str(p.parent) for p in root.glob("tasks/*/task.json"))
    if not found:
        raise IncaError(
            f"{path} is neither a task directory (with task.json) nor a run "
            "directory with saved tasks (tasks/*/task.json)"
        )
    return found


def run(args: argparse.Namespace) -> None:
    from inca.data import Subset, load_dataset
    from inca.tasks import evaluate_tasks, load_task, run_split
    from inca.tasks.by_backbone import MultiBackbone

    tasks = [load_task(p) for p in task_dirs(args.run)]
    multi = MultiBackbone(tasks, device=args.device, precision=args.precision)
    if args.data:
        subset = Subset.whole(load_dataset(args.data, "test" if args.split == "test" else "train"))
        where = f"{args.data} ({subset.dataset.split})"
    else:  # the run's own split, rebuilt from the same arguments
        subset = run_split(tasks[0], args.split)
        where = f"{tasks[0].data['data']} {args.split} split of the run"
    accuracies, n = evaluate_tasks(
        multi, subset, batch_size=args.batch_size, progress=not args.no_progress
    )
    passes = "one backbone pass" if len(multi.groups) == 1 else f"{len(multi.groups)} backbones"
    print(f"{n} images of {where}; {passes} for {len(tasks)} task(s):")
    for name, acc in accuracies.items():
        saved = multi.tasks[name].metrics.get(f"{args.split}_acc") if not args.data else None
        note = f" (saved: {100 * saved:.2f}%)" if saved is not None else ""
        print(f"  {name:<40} {100 * acc:6.2f}%{note}")
