"""Options several subcommands share (backbone, splits, training budget), and what they build."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from inca.errors import IncaError
from inca.recipes.data_options import DATA_FIELDS, DEFAULT_MODEL

if TYPE_CHECKING:
    from inca.backbones import Backbone
    from inca.data import Splits
    from inca.train import TrainConfig


def int_at_least(low: int):  # noqa: ANN201  (an argparse type)
    """argparse type: a whole number >= ``low`` (``--image-size 0`` used to mean the default,
    a negative seed used to crash later)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"a whole number is needed, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {low} or more, got {value}")
        return value

    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def count_or_fraction(text: str) -> float:
    """argparse type of --val-size: a whole count ("2000") or a fraction below 1 ("0.2").
    "1.0" is refused: it read as one image, never as "everything"."""
    if text.strip().lstrip("+").isdigit():
        return int(text)
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a count or a fraction is needed, got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(
            f"a fraction must be below 1 (a count is a whole number such as 2000), got {text}"
        )
    return value


def size_or_auto(text: str) -> int | str:
    """argparse type of --image-size where there is data: pixels, or "auto"."""
    return "auto" if text.strip().lower() == "auto" else positive_int(text)


def crop_fraction(text: str) -> float:
    """argparse type of --crop: "center:F" or "F", the fraction of each side kept, centred."""
    value = text.strip().lower().removeprefix("center:").removeprefix("centre:")
    try:
        fraction = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--crop takes center:F or F, the fraction of each side kept (e.g. center:0.5), "
            f"not {text!r}"
        ) from None
    if not 0.05 <= fraction <= 1:
        raise argparse.ArgumentTypeError(f"--crop keeps a fraction in [0.05, 1], got {fraction}")
    return fraction


def add_backbone_options(
    p: argparse.ArgumentParser, model: str = DEFAULT_MODEL, auto_size: bool = False
) -> None:
    """--model, --image-size, --precision, --device. With ``auto_size`` (commands that read a
    dataset) the image size defaults to "auto": chosen from the data (resolve_image_size)."""
    p.add_argument(
        "--model",
        default=model,
        help="backbone name, HF folder or hf:<id> (default: %(default)s; see `inca models`)",
    )
    if auto_size:
        p.add_argument(
            "--image-size",
            type=size_or_auto,
            default="auto",
            help="square input size in pixels, or auto (the default): the backbone's native "
            "size, or the images' own when they are smaller (never below half the native)",
        )
        p.add_argument(
            "--crop",
            type=crop_fraction,
            default=1.0,
            help="keep the centred part of each image first: center:F keeps the fraction F of "
            "each side (center:0.5: a small object in the middle of a large frame); saved with "
            "the tasks and applied when they predict (default: the whole image)",
        )
    else:
        p.add_argument(
            "--image-size",
            type=positive_int,
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


def count_or_all(text: str) -> int | str:
    """argparse type of --train-size: a whole count, or "all" (every image)."""
    return "all" if text.strip().lower() == "all" else positive_int(text)


def add_split_options(p: argparse.ArgumentParser) -> None:
    """--train-size, --val-size, --test-size and --seed. Left out, a size is the data's own:
    every image of a folder (its val/ and test/ folders, or 15% and 20% held out per class),
    Fashion-MNIST's measured 10k / 2k / 10k (``inca.data.sources.default_sizes``)."""
    p.add_argument(
        "--train-size",
        type=count_or_all,
        default=None,
        help="stratified training subset, or 'all' (default: every image; 10000 for fashion-mnist)",
    )
    p.add_argument(
        "--val-size",
        type=count_or_fraction,
        default=None,
        help="count, or fraction, of train for validation (default: the data's own val/ "
        "split, else 15%% of train with a few images of every class; 2000 for fashion-mnist)",
    )
    p.add_argument(
        "--test-size",
        type=positive_int,
        default=None,
        help="stratified test subset (default: the whole test split)",
    )
    p.add_argument("--seed", type=non_negative_int, default=0)


def fill_default_sizes(args: argparse.Namespace) -> None:
    """Sizes left out that the dataset fixes as counts (Fashion-MNIST's 10k / 2k) written into
    ``args``, so that saved options say what ran (``inca.recipes.data_fit.fixed_sizes``)."""
    from inca.recipes.data_fit import fixed_sizes

    args.train_size, args.val_size = fixed_sizes(args.data, args.train_size, args.val_size)


def add_training_options(p: argparse.ArgumentParser) -> None:
    """What every training method shares (the same harness for all). Defaults depend on the
    method: frozen-feature training (adapter plans) trains from the cache to patience, see
    ``inca.train.FROZEN_DEFAULTS``; fine-tuning keeps an epoch budget (``TrainConfig()``)."""
    p.add_argument(
        "--epochs",
        type=positive_int,
        default=None,
        help="fine-tuning: the epoch budget (default 4); adapter plans: the epoch cap (default "
        "20), usually ended earlier by --patience",
    )
    p.add_argument("--batch-size", type=positive_int, default=None, help="default: 64; plans: 128")
    p.add_argument("--warmup", type=float, default=None, help="fraction of steps (default 0.1)")
    p.add_argument("--label-smoothing", type=float, default=None, help="default: 0; plans: 0.1")
    p.add_argument("--no-augment", action="store_true", help="no random crops / flips")
    p.add_argument(
        "--views",
        default="none",
        choices=["none", "flip", "rot90", "dihedral"],
        help="orientation-free images: show each training image as one of these exact views "
        "(dihedral: its 4 rotations by 90 degrees and their mirror images); from the cache, "
        "each image is cached once per view (x8 extraction and disk for dihedral)",
    )
    p.add_argument(
        "--test-views",
        action="store_true",
        help="with --views: average the class probabilities over the same views on "
        "validation, test and in the saved tasks (x views the backbone cost of a prediction)",
    )
    p.add_argument(
        "--workers",
        type=non_negative_int,
        default=None,
        help="loader processes (default: 0 on 2 cores or fewer, else 2)",
    )
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--compile",
        action="store_true",
        help="adapter plans: run the adapters' steps through torch.compile (about 1.3x faster "
        "steps on CPU after ~30 s of compiling, again after each halving rung; needs a C++ "
        "compiler): pays on long runs",
    )
    p.add_argument(
        "--metric",
        default=None,
        choices=["accuracy", "balanced-accuracy"],  # inca.train.metrics.METRICS
        help="what ranks members on validation (best epoch, halving, the best adapter and "
        "ensemble): accuracy, or balanced-accuracy (the mean recall per class; default: "
        "balanced-accuracy when the largest class has twice the training images of the "
        "smallest, else accuracy)",
    )
    g = p.add_argument_group("the budget of frozen-feature methods (adapter plans)")
    g.add_argument(
        "--min-steps",
        type=non_negative_int,
        default=None,
        help="at least this many optimizer steps: small sets get more epochs (default 1000)",
    )
    g.add_argument(
        "--patience",
        type=non_negative_int,
        default=None,
        help="stop after this many optimizer steps without a member improving its validation "
        "accuracy (or --metric) or its validation loss by 1%%; 0: run to the cap (default 800, "
        "at most 10 epochs; a value given here is not capped, and never below two epochs)",
    )
    g.add_argument(
        "--halving-epochs",
        type=non_negative_int,
        default=None,
        help="successive halving: every member trains this many epochs, then only the best "
        "--halving-keep fraction continues, again at doubling epochs; 0: off (default 2)",
    )
    g.add_argument("--halving-keep", type=float, default=None, help="default 0.25")
    g.add_argument(
        "--halving-min", type=positive_int, default=None, help="members always kept (default 12)"
    )


TRAIN_FLAGS = ("epochs", "batch_size", "warmup", "label_smoothing", "metric", "min_steps",
               "patience", "halving_epochs", "halving_keep", "halving_min")  # fmt: skip


def splits_of(args: argparse.Namespace) -> Splits:
    """The splits that add_split_options asked for."""
    from inca.data import make_splits

    fill_default_sizes(args)
    return make_splits(
        args.data,
        train_size=args.train_size,
        val_size=args.val_size,
        test_size=args.test_size,
        seed=args.seed,
    )


def train_config(args: argparse.Namespace, frozen: bool = False) -> TrainConfig:
    """The TrainConfig the flags ask for, over the defaults of fine-tuning or, with ``frozen``,
    of frozen-feature training. Online plan training augments (each epoch runs the backbone
    anyway); cached training reads one view per image, unaugmented."""
    from inca.train import FROZEN_DEFAULTS, TrainConfig

    flags = TRAIN_FLAGS if frozen else TRAIN_FLAGS[:5]  # the budget flags are frozen-only
    given = {k: getattr(args, k) for k in flags if getattr(args, k, None) is not None}
    if "batch_size" in given:
        given["fit_batch"] = False  # a chosen batch is kept as chosen
    if frozen and "patience" in given:
        given["patience_cap_epochs"] = 0  # a chosen patience waits as long as it says
    base = dict(FROZEN_DEFAULTS) if frozen else {}
    if frozen and getattr(args, "no_cache", False):
        base["augment"] = True
    if args.no_augment:
        base["augment"] = False
    if frozen and getattr(args, "compile", False):
        base["compile"] = True
    if getattr(args, "views", "none") != "none":
        base |= {"views": args.views, "test_views": args.test_views}
    elif getattr(args, "test_views", False):
        raise IncaError("--test-views averages over --views; name the set (--views dihedral)")
    return TrainConfig(
        **(base | given),
        seed=args.seed,
        workers=args.workers,
        progress=not args.no_progress,
    )


def resolve_image_size(args: argparse.Namespace) -> None:
    """``--image-size auto`` made a number from the data and the backbone (printed, with why
    and the cost per image: ``inca.recipes.data_fit``)."""
    if args.image_size == "auto":
        from inca.recipes.data_fit import auto_image_size

        args.image_size = auto_image_size(args.model, args.data, args.precision, args.device)


def data_options_of(args: argparse.Namespace) -> dict[str, Any]:
    """The shared run options the flags give (``DataOptions``' fields), sizes and image size
    resolved: what ``RunOptions`` and ``CompareOptions`` are made from."""
    fill_default_sizes(args)
    resolve_image_size(args)
    resolve_metric(args)
    return {name: getattr(args, name) for name in DATA_FIELDS}


def resolve_metric(args: argparse.Namespace) -> None:
    """No ``--metric`` given: the one the data call for (``inca.recipes.data_fit.auto_metric``:
    balanced accuracy on imbalanced classes), written into ``args`` for the training configs."""
    if hasattr(args, "metric") and args.metric is None:
        from inca.recipes.data_fit import auto_metric

        args.metric = auto_metric(args.data)


def backbone_of(args: argparse.Namespace, name: str | None = None) -> Backbone:
    """The backbone --model (or ``name``) names, with the --image-size, --precision and
    --device options."""
    from inca.backbones import load_backbone

    options = {"precision": args.precision, "device": args.device}
    if args.image_size:
        options["image_size"] = args.image_size
    if getattr(args, "crop", 1.0) != 1.0:
        options["crop"] = args.crop
    return load_backbone(name or args.model, **options)
