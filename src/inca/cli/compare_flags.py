"""The comparison's options on the command line, shared by `inca compare` and by `inca train`
with a plan of a method trained from pixels (a module of its own so that neither command
imports the other): what they parse into a typed ``CompareOptions``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from inca.cli.options import train_config
from inca.errors import IncaError

if TYPE_CHECKING:
    from inca.recipes.compare_options import CompareOptions

# options that plans replaced: a clear error that says how to write them now
REPLACED = {
    "--lrs": "--lrs was replaced by plans: the rates are the plan's lr, e.g. --plans \"full "
    'lr=1e-5,3e-5 | vqt lr=1e-3" (inca compare) or --plan "vqt lr=1e-3,1e-2" (inca train)',
    "--finetune": "--finetune was replaced by plans: a method's options follow its name, e.g. "
    '--plans "full layer_decay=0.8 | lora lora_r=4" (inca compare) or --plan "vqt queries=2" '
    "(inca train)",
    "--lr": "--lr was replaced by the plan's lr=, the one spelling of a learning rate, e.g. "
    '--plan "inca taps=block.5 lr=1e-3,3e-3" (entries without lr= use 1e-3)',
    "--wd": '--wd was replaced by the plan\'s wd=, e.g. --plan "inca taps=block.5 wd=0.05" '
    "(entries without wd= use 0.05)",
    "--method": '--method was replaced by --plan: name the method and its rates, e.g. --plan "vqt '
    'lr=1e-3,1e-2 queries=2" (see `inca methods`)',
}


class _Replaced(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001
        parser.error(REPLACED[option_string])  # usage, the message, exit 2


def add_replaced_options(p: argparse.ArgumentParser, *flags: str) -> None:
    """Flags of earlier versions, hidden: using one is an error saying what replaced it."""
    for flag in flags:
        p.add_argument(flag, action=_Replaced, help=argparse.SUPPRESS)


def parse_plans(text: str) -> dict[str, str]:
    """--plans "inca:inca taps=block.5 | full lr=1e-5,3e-5 layer_decay=0.8" -> {method: plan}.
    An item names its method with "METHOD:" (for a frozen-feature method whose plan holds other
    kinds too) or by its first word."""
    from inca.methods import get_method
    from inca.train.plan import plan_method

    plans = {}
    for item in filter(str.strip, text.split("|")):
        head, colon, rest = item.partition(":")
        try:
            named = bool(colon) and get_method(head.strip()) is not None
        except IncaError:
            named = False
        method, plan = (head.strip(), rest.strip()) if named else (None, item.strip())
        method = method or plan_method(plan)  # parsed once, by CompareOptions, before any work
        if method in plans:
            raise IncaError(f"--plans: {method} has two plans; give it one")
        plans[method] = plan
    return plans


def compare_options(args: argparse.Namespace, plans: dict[str, str]) -> CompareOptions:
    """What `inca compare` (or `inca train` with a pixel method's plan) hands each method:
    data, splits, budgets, precision and the plans."""
    from inca.cli.options import data_options_of
    from inca.recipes.compare_options import CompareOptions

    shared = data_options_of(args)  # first: it resolves the data-driven defaults into args
    return CompareOptions(
        **shared,
        train=train_config(args),
        frozen=train_config(args, frozen=True),
        plans=plans,
    )
