"""`inca compare`: InCA against linear probing, VQT and fine-tuning, in one harness."""

from __future__ import annotations

import argparse

from inca.cli.compare_flags import add_replaced_options, compare_options, parse_plans
from inca.cli.options import add_backbone_options, add_split_options, add_training_options
from inca.recipes.data_options import DEFAULT_DATA


def add_parser(sub: argparse._SubParsersAction) -> None:
    from inca.methods import list_methods

    names = [m.name for m in list_methods()]

    p = sub.add_parser("compare", help="InCA against linear probing, VQT and fine-tuning methods")
    add_backbone_options(p, auto_size=True)
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument(
        "--methods",
        default="linear,inca,vqt,partial,lora,full,stochca",
        help=f"comma-separated, from: {', '.join(names)}",
    )
    p.add_argument("--out", default="runs/compare")
    add_split_options(p)
    add_training_options(p)  # the same budget and schedule for every method
    p.add_argument(
        "--plans",
        default=None,
        help="plans replacing methods' defaults, separated by |: \"inca:inca taps=block.5 "
        'lr=1e-3 | linear taps=block.* solver=lbfgs | full lr=1e-5,3e-5 layer_decay=0.8" '
        "(defaults: the main job's grid for inca, its reference probes for linear, each "
        "fine-tuning method's default rates; see `inca methods`)",
    )
    add_replaced_options(p, "--lrs", "--finetune")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from inca.recipes.compare import compare, parse_methods
    from inca.report.compare import compare_table

    options = compare_options(args, parse_plans(args.plans or ""))
    summary = compare(parse_methods(args.methods), options, args.out)
    if not summary:
        return  # a torchrun rank other than 0: rank 0 reports
    print()
    print(compare_table(summary))
    print(f"report: {args.out}/compare.md, plot: {args.out}/accuracy_vs_cost.png")
