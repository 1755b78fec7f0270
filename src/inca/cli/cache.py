"""`inca cache`: write activation caches of a dataset's splits, to share between runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from inca.cli.options import (
    add_backbone_options,
    add_split_options,
    backbone_of,
    non_negative_int,
    positive_int,
    resolve_image_size,
    splits_of,
)
from inca.recipes.data_options import DEFAULT_DATA


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cache", help="write activation caches of a dataset's splits to disk")
    add_backbone_options(p, auto_size=True)
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--out", required=True, help="cache root: writes OUT/{train,val,test}")
    p.add_argument("--taps", default="block.*", help="tap names/globs (default: %(default)s)")
    p.add_argument("--splits", default="train,val,test")
    add_split_options(p)
    p.add_argument(
        "--views", type=positive_int, default=1, help="augmented views per training image"
    )
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float16", "bfloat16", "float32"],
        help="auto: bfloat16 when the backbone runs in bf16, else float16",
    )
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--workers", type=non_negative_int, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from inca.cache import ActivationCache, build_cache
    from inca.cache.format import row_bytes
    from inca.train.plan import select_taps

    resolve_image_size(args)
    backbone = backbone_of(args)
    taps = select_taps(args.taps, list(backbone.taps))
    splits = splits_of(args)
    for split in [s.strip() for s in args.splits.split(",")]:
        subset = getattr(splits, split)
        views = args.views if split == "train" else 1
        directory = build_cache(
            backbone,
            subset,
            taps,
            Path(args.out) / split,
            views=views,
            augment=views > 1,
            dtype=args.dtype,
            batch_size=args.batch_size,
            seed=args.seed,
            workers=args.workers,
            progress=not args.no_progress,
        )
        cache = ActivationCache(directory)
        size = cache.header["rows"] * row_bytes(cache.shapes, cache.dtype) / 2**30
        print(
            f"{directory}: {len(subset)} images x {views} view(s), {len(taps)} taps, "
            f"{cache.dtype}, {size:.2f} GiB"
        )
