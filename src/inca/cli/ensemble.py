"""`inca ensemble RUN_A RUN_B ... --out DIR`: one ensemble over several runs' members (several
backbones too), selected on validation as within a run, tested once; saved as a task that
`inca serve` serves. The work is the library's (inca.recipes.cross_ensemble)."""

from __future__ import annotations

import argparse

from inca.cli.options import positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ensemble", help="one ensemble over several runs' members (across backbones)"
    )
    p.add_argument("runs", nargs="+", help="run directories of `inca train` on the same data")
    p.add_argument("--out", required=True, help="directory to save the ensemble's task in")
    p.add_argument("--name", default=None, help="the task's name (default: data-backbones)")
    p.add_argument(
        "--max-ensemble", type=positive_int, default=10, help="largest top-k ensemble tried"
    )
    p.add_argument(
        "--metric", default="accuracy", choices=["accuracy", "balanced-accuracy"],
        help="what selection ranks by on validation",
    )  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from inca.recipes.cross_ensemble import ensemble_runs
    from inca.report.format import markdown_table

    result = ensemble_runs(args.runs, args.out, args.name, args.max_ensemble, args.metric)
    rows = [
        [
            "all runs" if r["members_of"] == "all" else f"{r['members_of']} alone",
            f"{100 * r['val_acc']:.2f}",
            f"{100 * r['test_acc']:.2f}",
            f"{r['method']}, {r['k']}"
            + (f" ({', '.join(f'{k} {n}' for k, n in r['by_run'].items())})"
               if r["members_of"] == "all" else ""),
        ]
        for r in result["rows"]
    ]  # fmt: skip
    print(markdown_table(["members of", "val %", "test %", "ensemble, members"], rows))
    print(f"saved {result['kind']}: {args.out} (try: inca serve {args.out})")
