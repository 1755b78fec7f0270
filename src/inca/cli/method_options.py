"""The options of the comparison harness's methods, shared by `inca compare` and
`inca train --method` (a module of its own so that neither imports the other)."""

from __future__ import annotations

import argparse
from typing import Any

from inca.cli.options import train_config
from inca.errors import IncaError


def add_method_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--lrs",
        default=None,
        help='learning rates to sweep per method, e.g. "full=1e-5,3e-5 vqt=1e-3" (with '
        '--method: just "1e-3,1e-2")',
    )
    p.add_argument(
        "--finetune",
        default=None,
        help='method options, e.g. "layer_decay=0.75 blocks=2 lora_r=8 stochca_p=0.1 '
        'queries=1 grad_checkpointing=true" (see `inca methods`)',
    )


def parse_lrs(text: str, method: str | None) -> dict[str, list[float]]:
    """--lrs "full=1e-5,3e-5 vqt=1e-3" -> {method: [lr, ...]}; with one ``method``, a bare
    "1e-3,1e-2" is that method's."""
    items = text.split()
    if method is not None and len(items) == 1 and "=" not in items[0]:
        items = [f"{method}={items[0]}"]
    lrs = {}
    for item in items:
        name, _, values = item.partition("=")
        try:
            lrs[name] = [float(v) for v in values.split(",")]
        except ValueError:
            raise IncaError(
                f"--lrs: cannot read {item!r}; write METHOD=LR,LR,... per method, e.g. "
                '"full=1e-5,3e-5 vqt=1e-3"'
            ) from None
    return lrs


def method_options(args: argparse.Namespace) -> dict[str, Any]:
    """What `inca compare` and `inca train --method` hand to each method: data, splits, budget,
    precision, learning-rate sweeps and fine-tuning options."""
    from inca.recipes.compare import default_options
    from inca.train.plan import parse_value

    options = default_options(
        args.model,
        args.data,
        args.image_size,
        args.train_size,
        args.val_size,
        args.test_size,
        train_config(args),
        train_config(args, frozen=True),
    )
    options |= {"precision": args.precision, "device": args.device}
    if args.lrs:  # "full=1e-5,3e-5 lora=1e-3", or for one --method "1e-3,1e-2"
        options["lrs"] = parse_lrs(args.lrs, getattr(args, "method", None))
    if getattr(args, "plans", None):  # "inca:inca taps=block.5 | linear:linear taps=block.5"
        options["plans"] = {}
        for item in args.plans.split("|"):
            method, colon, plan = item.partition(":")
            if not colon or method.strip() not in ("inca", "linear"):
                raise IncaError(
                    f"--plans: cannot read {item!r}; write METHOD:PLAN for inca or linear, "
                    'separated by "|", e.g. "inca:inca taps=block.5 | linear:linear taps=block.*"'
                )
            options["plans"][method.strip()] = plan.strip()
    if args.finetune:  # "layer_decay=0.75 blocks=2 grad_checkpointing=true"
        options["finetune"] = {
            k: parse_value(v) for k, _, v in (item.partition("=") for item in args.finetune.split())
        }
    return options
