"""`inca train`: one-to-many training of an adapter plan (the main job), or the plan of a
method trained from pixels (``--plan "vqt lr=1e-3,1e-2"``), as the comparison runs it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from inca.cli.compare_flags import add_replaced_options, compare_options
from inca.cli.options import (
    add_backbone_options,
    add_split_options,
    add_training_options,
    data_options_of,
    positive_int,
    train_config,
)
from inca.errors import IncaError
from inca.recipes.data_options import DEFAULT_DATA


def add_parser(sub: argparse._SubParsersAction) -> None:
    from inca.train.plan import DEFAULT_PLAN

    p = sub.add_parser("train", help="one-to-many training of many adapters (the main job)")
    add_backbone_options(p, auto_size=True)
    p.add_argument("--data", default=DEFAULT_DATA, help="dataset (see `inca datasets`)")
    p.add_argument(
        "--plan",
        default=DEFAULT_PLAN,
        help='adapters to train, e.g. "inca taps=block.* lr=1e-3,3e-4; linear '
        'taps=block.*[-3:]", or a method trained from pixels with its rates and options, e.g. '
        '"full lr=2e-5,5e-5 layer_decay=0.75" (see `inca methods`; default: %(default)s)',
    )
    p.add_argument("--out", default="runs/train", help="run directory (default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    add_replaced_options(p, "--method", "--lrs", "--finetune", "--lr", "--wd")
    add_split_options(p)
    p.add_argument(
        "--max-ensemble", type=positive_int, default=10, help="largest top-k ensemble tried"
    )
    add_training_options(p)
    p.add_argument(
        "--cache",
        default=None,
        metavar="DIR",
        help="activation caches in DIR/{train,val,test} (built first if absent, shareable "
        "between runs): one backbone pass instead of one per epoch (default: OUT/cache)",
    )
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="train online (a backbone pass per epoch, with augmentation) instead",
    )
    p.add_argument(
        "--seeds",
        type=positive_int,
        default=1,
        help="repeat the plan with N seeds (cheap from the cache) and report mean ± std",
    )
    p.add_argument(
        "--cache-views",
        type=positive_int,
        default=1,
        help="augmented views per training image in the cache (1: no augmentation)",
    )
    p.add_argument(
        "--cache-dtype",
        default="auto",
        choices=["auto", "float16", "bfloat16", "float32"],
        help="auto: bfloat16 when the backbone runs in bf16, else float16",
    )
    p.add_argument(
        "--shard",
        default="data",
        choices=["data", "adapters"],
        help="under torchrun: split every batch over the processes (data, the default), or "
        "give each process a slice of the plan's adapters to train over the whole cache "
        "(adapters: a large grid spread over many GPUs, no gradient traffic)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from inca.methods import get_method
    from inca.train.plan import plan_method

    shared = data_options_of(args)  # sizes and image size resolved (in args too), once
    if not get_method(plan_method(args.plan)).from_tokens:
        return train_method(args)
    from inca.recipes.plan_run import run_plan
    from inca.recipes.run_options import RunOptions
    from inca.report.run import results_table, run_summary

    if args.no_augment and args.cache_views > 1:
        raise IncaError(
            f"--cache-views {args.cache_views} caches augmented views; with --no-augment they "
            "would be identical copies: drop one of the two options"
        )
    config = train_config(args, frozen=True)
    cache = None if args.no_cache else (args.cache or str(Path(args.out) / "cache"))
    options = RunOptions(
        **shared,
        plan=args.plan,
        max_ensemble=args.max_ensemble,
        train=config,
        cache=cache,
        seeds=args.seeds,
        cache_views=args.cache_views,
        cache_dtype=args.cache_dtype,
        shard=args.shard,
    )
    results = run_plan(options, args.out, resume=args.resume)
    if not results:
        return  # a torchrun rank other than 0: rank 0 reports
    print()
    print(results_table(results, every_adapter=False))
    print(run_summary(results))
    print(
        f"report (every adapter): {args.out}/report.md, plots: {args.out}/accuracy_by_layer.png"
        + (f", {args.out}/confusion.png" if (Path(args.out) / "confusion.png").exists() else "")
    )
    print(
        f"saved tasks: {args.out}/tasks/best, {args.out}/tasks/ensemble "
        f"(try: inca predict {args.out}/tasks/best IMAGE...)"
    )


def train_method(args: argparse.Namespace) -> None:
    """A plan of a method trained from pixels: its sweep as the comparison runs it, in this
    process."""
    from inca.recipes.method_run import run_method
    from inca.report.compare import compare_table
    from inca.train.plan import plan_method
    from inca.utils.distributed import world
    from inca.utils.io import write_json

    method = plan_method(args.plan)  # the plan itself is parsed once, by the options
    if args.shard == "adapters":
        raise IncaError(
            f"--shard adapters spreads a grid of adapters over the processes; {method} trains "
            "from pixels and shares every batch over them instead: leave --shard out"
        )
    out = Path(args.out)
    done = out / "result.json"
    if args.resume and done.exists():
        print(f"{method}: finished before in {out}, not rerun")
        result = json.loads(done.read_text())
    else:
        options = compare_options(args, {method: args.plan})
        result = run_method(method, options, out, resume=args.resume)
        if world().is_main:
            write_json(done, result)
    print()
    print(
        compare_table({"rows": result["rows"], "budget": f"{result['rows'][0]['epochs']} epochs"})
    )
    print(f"saved task: {result['rows'][0]['task']} (try: inca predict TASK IMAGE...)")
