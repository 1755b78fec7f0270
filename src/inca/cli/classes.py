"""`inca classes remove|merge`: change the classes of an Open-InCA task without retraining the
others (``inca.tasks.open_classes``); the task is written anew, atomically."""

from __future__ import annotations

import argparse

from inca.cli.options import positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classes", help="remove or merge the classes of Open-InCA tasks")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    r = actions.add_parser("remove", help="a class never wins again; nothing else changes")
    r.add_argument("task", help="an Open-InCA task directory")
    r.add_argument("name", help="the class to remove")
    r.add_argument("--out", default=None, help="write the new task here (default: in place)")
    r.set_defaults(func=run_remove)

    m = actions.add_parser("merge", help="one classifier over two tasks' classes")
    m.add_argument("task_a")
    m.add_argument("task_b")
    m.add_argument("--out", required=True, help="the merged task's directory")
    m.add_argument("--name", default=None, help="its name (default: the out directory's)")
    m.add_argument(
        "--calibrate-on",
        default=None,
        metavar="DATA",
        help="fit a scale and a bias per class on held-out images of DATA (its validation "
        "split), so logits trained apart compare; accuracy before and after is printed",
    )
    m.add_argument("--calib-size", type=positive_int, default=500, help="held-out images")
    m.set_defaults(func=run_merge)


def run_remove(args: argparse.Namespace) -> None:
    from inca.tasks import load_task
    from inca.tasks.open_classes import remove_class

    task = remove_class(load_task(args.task), args.name)
    out = args.out or args.task
    task.save(out)
    print(f"{out}: {len(task.class_names)} classes ({', '.join(task.class_names)})")


def run_merge(args: argparse.Namespace) -> None:
    from pathlib import Path

    from inca.tasks import load_task
    from inca.tasks.open_classes import calibrate, held_out_tokens, merge_tasks

    name = args.name or Path(args.out).name
    task = merge_tasks(load_task(args.task_a), load_task(args.task_b), name)
    if args.calibrate_on:
        tokens, labels = held_out_tokens(task, args.calibrate_on, args.calib_size)
        result = calibrate(task, tokens, labels)
        print(
            f"calibration on {result['images']} held-out images: accuracy "
            f"{100 * result['acc_before']:.2f}% before, {100 * result['acc_after']:.2f}% after"
        )
    task.save(args.out)
    print(f"{args.out}: {len(task.class_names)} classes from {args.task_a} and {args.task_b}")
