"""`inca bench` (the one-to-many claims R1-R4 and the epoch-time curve) and `inca bench-memory`
(training-step peak memory of each method)."""

from __future__ import annotations

import argparse

from inca.cli.options import positive_int
from inca.recipes.data_options import DEFAULT_DATA, DEFAULT_MODEL, MEASURED_IMAGE_SIZE


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench-memory", help="training-step peak memory: VQT, naive VQT, full fine-tuning, ..."
    )
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--image-size", type=positive_int, default=MEASURED_IMAGE_SIZE)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--modes", default="inference,vqt,vqt-naive,full,stochca,lora")
    p.add_argument("--out", default="benchmarks/results/memory.json")
    p.set_defaults(func=run_memory)

    p = sub.add_parser(
        "bench-classes", help="classes over time: Open-InCA against the analytic baselines"
    )
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--image-size", type=positive_int, default=MEASURED_IMAGE_SIZE)
    p.add_argument("--tap", default="block.5")
    p.add_argument("--sizes", default="5000,500,2000", help="train,val,test images")
    p.add_argument("--epochs", type=positive_int, default=10, help="trained queries, per step")
    p.add_argument("--joint-epochs", type=int, default=20, help="joint InCA (0: not run)")
    p.add_argument("--orders", type=positive_int, default=3, help="class orders (seeded)")
    p.add_argument("--no-queries", action="store_true", help="skip the trained-queries row")
    p.add_argument("--second", default="digits", help="a second protocol's data ('' for none)")
    p.add_argument("--out", default="benchmarks/results/class_incremental.json")
    p.set_defaults(func=run_classes)

    p = sub.add_parser(
        "bench-detail", help="small details: the main job on a made folder at auto vs 112 px"
    )
    p.add_argument("--folder", default="runs/small-detail/data", help="where the set is made")
    p.add_argument("--runs", default="runs/small-detail", help="run directories (resumable)")
    p.add_argument("--out", default="benchmarks/results/small_detail.json")
    p.set_defaults(func=run_detail)

    p = sub.add_parser(
        "bench-views", help="orientation-free data: --views, --test-views and --crop measured"
    )
    p.add_argument("--folder", default="runs/views/data", help="where the set is made")
    p.add_argument("--runs", default="runs/views", help="run directories (resumable)")
    p.add_argument("--only", default="", help="comma-separated run labels (default: all)")
    p.add_argument("--out", default="benchmarks/results/views.json")
    p.set_defaults(func=run_views)

    p = sub.add_parser("bench", help="measure the one-to-many claims (R1-R4, the curve)")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--train-size", type=positive_int, default=1024)
    p.add_argument("--image-size", type=positive_int, default=MEASURED_IMAGE_SIZE)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument(
        "--world-size",
        type=positive_int,
        default=None,
        metavar="N",
        help="instead: the torchrun benchmark, cache build and one-to-many epochs on 1 and N "
        "processes (writes OUT/scaling.json)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    if args.world_size:
        from inca.bench.scaling import run_scaling_benchmark

        run_scaling_benchmark(
            args.world_size, args.model, args.data, args.train_size, args.image_size,
            out=args.out,
        )  # fmt: skip
        return
    from inca.bench.one_to_many import run_benchmark

    run_benchmark(
        model=args.model,
        data=args.data,
        n=args.train_size,
        image_size=args.image_size,
        out=args.out,
    )


def run_memory(args: argparse.Namespace) -> None:
    from inca.bench.memory import run_memory_benchmark

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    run_memory_benchmark(modes, args.model, args.image_size, args.batch_size, args.out)
    if args.out:
        print(f"written: {args.out}")


def run_classes(args: argparse.Namespace) -> None:
    from inca.bench.classes import run_class_incremental

    train, val, test = (int(x) for x in args.sizes.split(","))
    run_class_incremental(args.model, args.data, args.image_size, args.tap, (train, val, test),
                          orders=args.orders, epochs=args.epochs, joint_epochs=args.joint_epochs,
                          queries=not args.no_queries, second=args.second or None,
                          out=args.out)  # fmt: skip


def run_detail(args: argparse.Namespace) -> None:
    from inca.bench.detail import run_small_detail

    run_small_detail(args.folder, args.runs, out=args.out)


def run_views(args: argparse.Namespace) -> None:
    from inca.bench.views import run_views as measure

    only = [x.strip() for x in args.only.split(",") if x.strip()] or None
    measure(args.folder, args.runs, out=args.out, only=only)
