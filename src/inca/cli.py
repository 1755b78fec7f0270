"""The ``inca`` command. Subcommands are thin wrappers over the library.

inca models                      the backbones inca can load by name
inca layers NAME                 a backbone's taps with token shapes
inca datasets                    the dataset sources
inca extract [options]           pooled features of a dataset split, with throughput
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from inca.errors import IncaError


def _add_backbone_options(p: argparse.ArgumentParser, model: str = "dinov2-small") -> None:
    p.add_argument(
        "--model",
        default=model,
        help="backbone name, HF folder or hf:<id> (default: %(default)s; see `inca models`)",
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="square input size in pixels (default: the backbone's own)",
    )
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "amp-bf16", "amp-fp16"],
        help="auto = bf16 where the hardware has it, else fp32 (CPU) / fp16 AMP (GPU)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")


def _backbone(args: argparse.Namespace, name: str | None = None):
    from inca.backbones import load_backbone

    options = {"precision": args.precision, "device": args.device}
    if args.image_size:
        options["image_size"] = args.image_size
    return load_backbone(name or args.model, **options)


def cmd_models(args: argparse.Namespace) -> None:
    from inca.backbones import list_backbones

    entries = list_backbones()
    width = max(len(e.name) for e in entries)
    for e in entries:
        print(f"{e.name:<{width}}  {e.description}")
    print(
        "\nAlso: a local Hugging Face model folder (ViT, DeiT, DINOv2, CLIP vision), "
        "hf:<hub id>, or in Python any nn.Module with taps=[module patterns]."
    )


def cmd_layers(args: argparse.Namespace) -> None:
    backbone = _backbone(args, args.name)
    taps = backbone.taps
    pre = backbone.preprocess
    print(
        f"{backbone.name}: {backbone.num_params / 1e6:.2f} M params, {backbone.family}, "
        f"{pre.image_size} px (patch {pre.patch_size}), weights {backbone.weights_hash}, "
        f"{backbone.device} {backbone.precision.name}"
    )
    print(
        f"{len(taps)} taps; tokens (T, D) per image, {backbone.num_prefix_tokens} prefix "
        "token(s) before the patch tokens:"
    )
    print(f"  {'tap':<10} {'T':>6} {'D':>6}")
    for t in taps.values():
        print(f"  {t.name:<10} {t.tokens:>6} {t.dim:>6}")


def cmd_datasets(args: argparse.Namespace) -> None:
    from inca.data import list_datasets

    rows = list_datasets()
    width = max(len(name) for name, _ in rows)
    for name, description in rows:
        print(f"{name:<{width}}  {description}")


def cmd_extract(args: argparse.Namespace) -> None:
    from inca.data import ImageTransform, make_loader, make_splits
    from inca.extract import extract_features

    backbone = _backbone(args)
    taps = [t.strip() for t in args.taps.split(",")] if args.taps else backbone.tap_names
    taps = backbone.validate_taps(taps)
    splits = make_splits(
        args.data,
        train_size=args.train_size,
        val_size=args.val_size,
        test_size=args.test_size,
        seed=args.seed,
    )
    subset = getattr(splits, args.split)
    print(
        f"{args.data}: {splits.sizes()} images; extracting {args.split} ({len(subset)}) "
        f"through {backbone.name} at {backbone.preprocess.image_size} px, "
        f"{backbone.precision.name} on {backbone.device}; taps {', '.join(taps)}"
    )
    transform = ImageTransform(backbone.preprocess)
    loader = make_loader(subset, transform, batch_size=args.batch_size, num_workers=args.workers)
    feats = extract_features(
        backbone, loader, taps, total=len(subset), progress=not args.no_progress
    )
    tp = feats.throughput
    print(
        f"extracted {tp.images} images in {tp.seconds:.1f} s: {tp.images_per_s:.1f} img/s "
        f"end to end, {tp.backbone_images_per_s:.1f} img/s in the backbone"
    )
    if args.out:
        meta = {
            "backbone": backbone.describe(),
            "data": args.data,
            "split": args.split,
            "fingerprint": subset.dataset.fingerprint(),
            "seed": args.seed,
            "sizes": splits.sizes(),
            "class_names": subset.class_names,
            "pooling": "concat(CLS, mean of patch tokens)"
            if backbone.num_prefix_tokens
            else "mean of tokens",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        out = feats.save(args.out, meta)
        shapes = ", ".join(f"{t} {tuple(f.shape)}" for t, f in feats.features.items())
        print(f"saved {out}/features.safetensors ({shapes}) and features.json")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inca",
        description="Adapt frozen pretrained models through their intermediate representations.",
    )
    from inca._version import __version__

    parser.add_argument("--version", action="version", version=f"inca {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="list the backbones inca can load by name")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("layers", help="a backbone's taps with their token shapes")
    p.add_argument("name", help="backbone name (see `inca models`) or HF folder")
    _add_backbone_options(p)
    p.set_defaults(func=cmd_layers)

    p = sub.add_parser("datasets", help="list the dataset sources")
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser("extract", help="pooled features of a dataset split, with throughput")
    _add_backbone_options(p)
    p.add_argument("--data", default="fashion-mnist", help="dataset (see `inca datasets`)")
    p.add_argument("--split", default="train", choices=["train", "val", "test"])
    p.add_argument("--train-size", type=int, default=None, help="stratified training subset")
    p.add_argument(
        "--val-size",
        type=float,
        default=0.1,
        help="fraction or count carved from train for validation (default %(default)s)",
    )
    p.add_argument("--test-size", type=int, default=None, help="stratified test subset")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--taps", default=None, help="comma-separated taps (default: all)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=None, help="loader processes (default: 2)")
    p.add_argument("--out", default=None, help="folder for features.safetensors + .json")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_extract)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except IncaError as e:
        print(f"inca: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("inca: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
