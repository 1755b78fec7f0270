"""`inca models`, `inca layers NAME`, `inca datasets`: what inca can load, and a backbone's taps."""

from __future__ import annotations

import argparse

from inca.cli.options import add_backbone_options, backbone_of


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the backbones inca can load by name")
    p.set_defaults(func=models)

    p = sub.add_parser("layers", help="a backbone's taps with their token shapes")
    p.add_argument("name", help="backbone name (see `inca models`) or HF folder")
    add_backbone_options(p)
    p.set_defaults(func=layers)

    p = sub.add_parser("datasets", help="list the dataset sources")
    p.set_defaults(func=datasets)

    p = sub.add_parser("methods", help="the training methods, their options and defaults")
    p.set_defaults(func=methods)


def methods(args: argparse.Namespace) -> None:
    """The method registry: what each method reads, what a comparison sweeps, its options."""
    from inca.methods import list_methods

    for m in list_methods():
        where = "frozen tokens (from the cache)" if m.from_tokens else "pixels (own pass)"
        sweep = (
            f"plan: {m.default_plan}"
            if m.from_tokens
            else f"rates swept: {', '.join(f'{lr:g}' for lr in m.default_lrs)}"
        )
        print(f"{m.name:<8} {m.summary}\n         reads {where}; {sweep}")
        options = ", ".join(f"{name}={default}" for name, default in m.options_help())
        print(f"         options: {options}")


def models(args: argparse.Namespace) -> None:
    from inca.backbones import list_backbones

    entries = list_backbones()
    width = max(len(e.name) for e in entries)
    for e in entries:
        print(f"{e.name:<{width}}  {e.description}")
    print(
        "\nAlso: a local Hugging Face model folder (ViT, DeiT, DINOv2, CLIP vision), "
        "hf:<hub id>, or in Python any nn.Module with taps=[module patterns]."
    )


def layers(args: argparse.Namespace) -> None:
    backbone = backbone_of(args, args.name)
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


def datasets(args: argparse.Namespace) -> None:
    from inca.data import list_datasets

    rows = list_datasets()
    width = max(len(name) for name, _ in rows)
    for name, description in rows:
        print(f"{name:<{width}}  {description}")
