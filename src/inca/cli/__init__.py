"""The ``inca`` command. Subcommands are thin wrappers over the library, one module each.

inca models                      the backbones inca can load by name       (info.py)
inca layers NAME                 a backbone's taps with token shapes       (info.py)
inca datasets                    the dataset sources                       (info.py)
inca methods                     the training methods and their options    (info.py)
inca train [options]             one-to-many training (the main job)       (train.py)
inca cache --out DIR             activation caches of a dataset's splits   (cache.py)
inca compare [options]           every method in one harness               (compare.py)
inca bench, inca bench-memory    the one-to-many claims; peak memory       (bench.py)
inca eval RUN                    a run's saved tasks on a split            (evaluate.py)
inca ensemble RUN_A RUN_B --out  one ensemble over runs (across backbones) (ensemble.py)
inca predict TASK... IMAGE...    several tasks, one backbone pass          (predict.py)
inca serve TASK...               the tasks over HTTP; bench-serve           (serve.py)
inca classes remove|merge        an Open-InCA task's classes                (classes.py)

Each subcommand module has ``add_parser(subparsers)``, which sets ``func`` to the function that
runs it. Heavy modules (torch, training) are imported inside those functions so that
``inca --help`` stays quick.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from inca._version import __version__
from inca.cli import (
    bench,
    cache,
    classes,
    compare,
    ensemble,
    evaluate,
    info,
    predict,
    serve,
    train,
)
from inca.errors import IncaError

# in the order `inca --help` lists them
SUBCOMMANDS = (info, train, cache, compare, bench, evaluate, ensemble, predict, serve, classes)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inca",
        description="Adapt frozen pretrained models through their intermediate representations.",
    )
    parser.add_argument("--version", action="version", version=f"inca {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show the Python traceback of errors too"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command ``argv`` (default: sys.argv); errors the user can fix print one line
    (exit 2), without a traceback."""
    args = build_parser().parse_args(argv)
    quiet_other_ranks()
    from inca.utils.device import tune_cpu_allocator

    tune_cpu_allocator()
    try:
        args.func(args)
        from inca.utils.distributed import leave

        leave()  # under torchrun: every rank done, the process group closed before exit
    except (IncaError, OSError) as e:  # what a user can fix: one line, no traceback
        if args.debug:
            raise
        print(f"inca: error: {explain(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("inca: interrupted", file=sys.stderr)
        return 130
    return 0


def explain(error: Exception) -> str:
    """The one line an anticipated error prints: an ``IncaError`` says its own fix; an
    ``OSError`` (a full disk, a read-only or file-valued --out) names the file and the cause."""
    if isinstance(error, IncaError):
        return str(error)
    import errno

    where = f" ({error.filename})" if getattr(error, "filename", None) else ""
    fix = {
        errno.ENOSPC: "free some disk space (or choose a directory on another disk), then run "
        "again with --resume where it applies",
        errno.EACCES: "choose a directory you may write to",
        errno.EROFS: "choose a directory on a writable file system",
        errno.ENOTDIR: "a path that should be a directory is a file: choose another path",
        errno.EEXIST: "a file is in the way: choose another path",
    }.get(error.errno, "check the path and the disk")
    return f"{error.strerror or error}{where}: {fix}"


def quiet_other_ranks() -> None:
    """Under torchrun, progress bars and printed logs come from rank 0 only (errors still
    reach stderr from any rank)."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and int(os.environ.get("RANK", "0")) > 0:
        os.environ["TQDM_DISABLE"] = "1"
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (for the life of the process)
