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
        "--views",
        type=views_option,
        default=1,
        help="K augmented views per training image, or a set of exact views (flip, rot90, "
        "dihedral: each training image cached in each, as `inca train --views` reads them)",
    )
    p.add_argument(
        "--test-views",
        action="store_true",
        help="validation and test cached in the exact views too (`inca train --test-views`)",
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


def views_option(text: str) -> int | str:
    """argparse type of ``inca cache --views``: a count of augmented views or a view set."""
    from inca.data.views import VIEW_SETS

    if text in VIEW_SETS:
        return text if text != "none" else 1
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"--views takes a count of augmented views or one of {', '.join(VIEW_SETS)}; "
            f"got {text!r}"
        ) from None


def run(args: argparse.Namespace) -> None:
    from inca.cache import ActivationCache, build_cache
    from inca.cache.format import row_bytes
    from inca.data.views import views_of
    from inca.errors import IncaError
    from inca.train.plan import select_taps

    resolve_image_size(args)
    backbone = backbone_of(args)
    taps = select_taps(args.taps, list(backbone.taps))
    splits = splits_of(args)
    exact = args.views if isinstance(args.views, str) else "none"
    if args.test_views and exact == "none":
        raise IncaError("--test-views caches validation and test in a set of exact views: "
                        "give it with --views flip, rot90 or dihedral")  # fmt: skip
    for split in [s.strip() for s in args.splits.split(",")]:
        subset = getattr(splits, split)
        view_set = exact if split == "train" or args.test_views else "none"
        if view_set != "none":
            views = len(views_of(view_set))
        else:  # augmented views of the training images only
            views = args.views if split == "train" else 1
        directory = build_cache(
            backbone,
            subset,
            taps,
            Path(args.out) / split,
            views=views,
            augment=views > 1 and view_set == "none",
            view_set=view_set,
            dtype=args.dtype,
            batch_size=args.batch_size,
            seed=args.seed,
            workers=args.workers,
            progress=not args.no_progress,
        )
        cache = ActivationCache(directory)
        size = cache.header["rows"] * row_bytes(cache.shapes, cache.dtype) / 2**30
        print(
            f"{directory}: {len(subset)} images x {views} view(s)"
            + (f" ({view_set})" if view_set != "none" else "")
            + f", {len(taps)} taps, "
            f"{cache.dtype}, {size:.2f} GiB"
        )
