"""The ``inca`` command. Subcommands are thin wrappers over the library.

inca models                      the backbones inca can load by name
inca layers NAME                 a backbone's taps with token shapes
inca datasets                    the dataset sources
inca extract [options]           pooled features of a dataset split, with throughput
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

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


def _add_split_options(p: argparse.ArgumentParser, train_size: int | None, val_size: float) -> None:
    p.add_argument(
        "--train-size",
        type=int,
        default=train_size,
        help="stratified training subset (default: %(default)s)",
    )
    p.add_argument(
        "--val-size",
        type=float,
        default=val_size,
        help="count, or fraction, carved from train for validation (default: %(default)s)",
    )
    p.add_argument(
        "--test-size",
        type=int,
        default=None,
        help="stratified test subset (default: the whole test split)",
    )
    p.add_argument("--seed", type=int, default=0)


def _add_training_options(p: argparse.ArgumentParser, frozen: bool = False) -> None:
    """What every training method shares (the same harness for all). Defaults depend on the
    method: frozen-feature training (adapter plans) trains from the cache to patience, see
    ``inca.train.FROZEN_DEFAULTS``; fine-tuning keeps an epoch budget (``TrainConfig()``)."""
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="fine-tuning: the epoch budget (default 4); adapter plans: the epoch cap (default "
        "20), usually ended earlier by --patience",
    )
    p.add_argument("--batch-size", type=int, default=None, help="default: 64; plans: 128")
    p.add_argument("--warmup", type=float, default=None, help="fraction of steps (default 0.1)")
    p.add_argument("--label-smoothing", type=float, default=None, help="default: 0; plans: 0.1")
    p.add_argument("--no-augment", action="store_true", help="no random crops / flips")
    p.add_argument("--workers", type=int, default=None, help="loader processes (default: 2)")
    p.add_argument("--no-progress", action="store_true")
    g = p.add_argument_group("the budget of frozen-feature methods (adapter plans)")
    g.add_argument(
        "--min-steps",
        type=int,
        default=None,
        help="at least this many optimizer steps: small sets get more epochs (default 1000)",
    )
    g.add_argument(
        "--patience",
        type=int,
        default=None,
        help="stop after this many optimizer steps (at least two epochs) without a better "
        "validation accuracy; 0: run to the cap (default 800)",
    )
    g.add_argument(
        "--halving-epochs",
        type=int,
        default=None,
        help="successive halving: every member trains this many epochs, then only the best "
        "--halving-keep fraction continues, again at doubling epochs; 0: off (default 2)",
    )
    g.add_argument("--halving-keep", type=float, default=None, help="default 0.25")
    g.add_argument("--halving-min", type=int, default=None, help="members always kept (default 12)")


_TRAIN_FLAGS = ("epochs", "batch_size", "warmup", "label_smoothing", "min_steps", "patience",
                "halving_epochs", "halving_keep", "halving_min")  # fmt: skip


def _splits(args: argparse.Namespace):
    """The splits that _add_split_options asked for."""
    from inca.data import make_splits

    return make_splits(
        args.data,
        train_size=args.train_size,
        val_size=args.val_size,
        test_size=args.test_size,
        seed=args.seed,
    )


def _train_config(args: argparse.Namespace, frozen: bool = False):
    """The TrainConfig the flags ask for, over the defaults of fine-tuning or, with ``frozen``,
    of frozen-feature training. Online plan training augments (each epoch runs the backbone
    anyway); cached training reads one view per image, unaugmented."""
    from inca.train import FROZEN_DEFAULTS, TrainConfig

    flags = _TRAIN_FLAGS if frozen else _TRAIN_FLAGS[:4]  # the budget flags are frozen-only
    given = {k: getattr(args, k) for k in flags if getattr(args, k, None) is not None}
    base = dict(FROZEN_DEFAULTS) if frozen else {}
    if frozen and getattr(args, "no_cache", False):
        base["augment"] = True
    if args.no_augment:
        base["augment"] = False
    return TrainConfig(
        **(base | given),
        seed=args.seed,
        workers=args.workers,
        progress=not args.no_progress,
    )


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
    from inca.data import ImageTransform, make_loader
    from inca.extract import extract_features

    backbone = _backbone(args)
    taps = [t.strip() for t in args.taps.split(",")] if args.taps else backbone.tap_names
    taps = backbone.validate_taps(taps)
    splits = _splits(args)
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


def cmd_train(args: argparse.Namespace) -> None:
    if args.method is not None:
        return train_method(args)
    from inca.train import train

    config = _train_config(args, frozen=True)
    cache = None if args.no_cache else (args.cache or str(Path(args.out) / "cache"))
    results = train(
        model=args.model,
        data=args.data,
        plan=args.plan,
        out=args.out,
        train_size=args.train_size,
        val_size=args.val_size,
        test_size=args.test_size,
        image_size=args.image_size,
        precision=args.precision,
        device=args.device,
        lr=args.lr,
        weight_decay=args.wd,
        max_ensemble=args.max_ensemble,
        resume=args.resume,
        config=config,
        cache=cache,
        seeds=args.seeds,
        cache_views=args.cache_views,
        cache_dtype=args.cache_dtype,
    )
    from inca.report import results_table, run_summary

    print()
    print(results_table(results, every_adapter=False))
    print(run_summary(results))
    print(f"report (every adapter): {args.out}/report.md, plot: {args.out}/accuracy_by_layer.png")
    print(
        f"saved tasks: {args.out}/tasks/best, {args.out}/tasks/ensemble "
        f"(try: inca predict {args.out}/tasks/best IMAGE...)"
    )


def _task_dirs(path: str) -> list[str]:
    """A task directory, or a run directory's saved tasks (tasks/*/task.json)."""
    from pathlib import Path

    root = Path(path)
    if (root / "task.json").is_file():
        return [str(root)]
    found = sorted(str(p.parent) for p in root.glob("tasks/*/task.json"))
    if not found:
        raise IncaError(
            f"{path} is neither a task directory (with task.json) nor a run "
            "directory with saved tasks (tasks/*/task.json)"
        )
    return found


def cmd_eval(args: argparse.Namespace) -> None:
    import torch

    from inca.data import ImageTransform, Subset, load_dataset, make_loader, make_splits
    from inca.select import accuracy
    from inca.tasks import MultiTask, load_task

    tasks = [load_task(p) for p in _task_dirs(args.run)]
    multi = MultiTask(tasks, device=args.device, precision=args.precision)
    first = tasks[0]
    if args.data:
        subset = Subset.whole(load_dataset(args.data, "test" if args.split == "test" else "train"))
        where = f"{args.data} ({subset.dataset.split})"
    else:  # the run's own split, rebuilt from the same arguments
        info = first.data
        sizes = info["sizes"]
        splits = make_splits(
            info["data"],
            train_size=sizes["train"],
            val_size=sizes["val"],
            test_size=sizes["test"],
            seed=info["seed"],
        )
        subset = getattr(splits, args.split)
        where = f"{info['data']} {args.split} split of the run"
    for t in tasks:
        if list(t.class_names) != list(subset.class_names):
            raise IncaError(
                f"task {t.name} knows classes {t.class_names[:5]}..., the data has "
                f"{subset.class_names[:5]}...; evaluate on data with its classes"
            )
    loader = make_loader(
        subset, ImageTransform(multi.backbone.preprocess), batch_size=args.batch_size
    )
    probs: dict[str, list] = {n: [] for n in multi.task_names}
    labels = []
    from tqdm.auto import tqdm

    for pixels, y, _ in tqdm(loader, desc="eval", unit="batch", disable=args.no_progress):
        for n, p in multi.predict_proba(pixels).items():  # ONE backbone pass for all tasks
            probs[n].append(p.cpu())
        labels.append(y)
    y = torch.cat(labels)
    print(f"{len(y)} images of {where}; one backbone pass for {len(tasks)} task(s):")
    for n in multi.task_names:
        saved = multi.tasks[n].metrics.get(f"{args.split}_acc") if not args.data else None
        note = f" (saved: {100 * saved:.2f}%)" if saved is not None else ""
        print(f"  {n:<40} {100 * accuracy(torch.cat(probs[n]), y):6.2f}%{note}")


def cmd_predict(args: argparse.Namespace) -> None:
    from pathlib import Path

    from inca.predict import format_predictions, predict_images
    from inca.tasks import MultiTask, load_task

    tasks = [p for p in args.paths if (Path(p) / "task.json").is_file()]
    images = [p for p in args.paths if p not in tasks]
    if not tasks or not images:
        raise IncaError(
            "give one or more task directories (with task.json), then images or "
            "folders of images: inca predict TASK... IMAGE..."
        )
    multi = MultiTask([load_task(t) for t in tasks], device=args.device, precision=args.precision)
    rows = predict_images(multi, images, batch_size=args.batch_size)
    print(format_predictions(rows, multi.task_names))


def cmd_cache(args: argparse.Namespace) -> None:
    from pathlib import Path

    from inca.cache import ActivationCache, build_cache
    from inca.cache.format import row_bytes
    from inca.train.plan import select_taps

    backbone = _backbone(args)
    taps = select_taps(args.taps, list(backbone.taps))
    splits = _splits(args)
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


def _parse_lrs(text: str, method: str | None) -> dict[str, list[float]]:
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


def _method_options(args: argparse.Namespace) -> dict:
    """What `inca compare` and `inca train --method` hand to each method: data, splits, budget,
    precision, learning-rate sweeps and fine-tuning options."""
    from inca.compare import default_options
    from inca.train.plan import parse_value

    options = default_options(
        args.model,
        args.data,
        args.image_size,
        args.train_size,
        args.val_size,
        args.test_size,
        _train_config(args),
        _train_config(args, frozen=True),
    )
    options |= {"precision": args.precision, "device": args.device}
    if args.lrs:  # "full=1e-5,3e-5 lora=1e-3", or for one --method "1e-3,1e-2"
        options["lrs"] = _parse_lrs(args.lrs, getattr(args, "method", None))
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


def _add_method_options(p: argparse.ArgumentParser) -> None:
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
        'queries=1 grad_checkpointing=true" (see inca.finetune.FineTuneConfig)',
    )


def cmd_compare(args: argparse.Namespace) -> None:
    from inca.compare import compare, parse_methods
    from inca.compare_report import compare_table

    summary = compare(parse_methods(args.methods), _method_options(args), args.out)
    print()
    print(compare_table(summary))
    print(f"report: {args.out}/compare.md, plot: {args.out}/accuracy_vs_cost.png")


def train_method(args: argparse.Namespace) -> None:
    """`inca train --method M`: one method of the comparison harness, in this process."""
    from inca.compare import run_method
    from inca.compare_report import compare_table
    from inca.io import write_json

    out = Path(args.out)
    done = out / "result.json"
    if args.resume and done.exists():
        print(f"{args.method}: finished before in {out}, not rerun")
        result = json.loads(done.read_text())
    else:
        options = _method_options(args)
        result = run_method(args.method, options, out, resume=args.resume)
        write_json(done, result)
    print()
    print(
        compare_table({"rows": result["rows"], "budget": f"{result['rows'][0]['epochs']} epochs"})
    )
    print(f"saved task: {result['rows'][0]['task']} (try: inca predict TASK IMAGE...)")


def cmd_bench_memory(args: argparse.Namespace) -> None:
    from inca.bench_memory import run_memory_benchmark

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    run_memory_benchmark(modes, args.model, args.image_size, args.batch_size, args.out)
    if args.out:
        print(f"written: {args.out}")


def cmd_bench(args: argparse.Namespace) -> None:
    from inca.bench import run_benchmark

    run_benchmark(
        model=args.model,
        data=args.data,
        n=args.train_size,
        image_size=args.image_size,
        out=args.out,
    )


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
    _add_split_options(p, train_size=None, val_size=0.1)
    p.add_argument("--taps", default=None, help="comma-separated taps (default: all)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=None, help="loader processes (default: 2)")
    p.add_argument("--out", default=None, help="folder for features.safetensors + .json")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_extract)

    from inca.compare import METHODS
    from inca.train.plan import DEFAULT_PLAN

    p = sub.add_parser("train", help="one-to-many training of many adapters (the main job)")
    _add_backbone_options(p)
    p.set_defaults(image_size=112)
    p.add_argument("--data", default="fashion-mnist", help="dataset (see `inca datasets`)")
    p.add_argument(
        "--plan",
        default=DEFAULT_PLAN,
        help='adapters to train, e.g. "inca taps=block.* lr=1e-3,3e-4; linear '
        'taps=block.*[-3:]" (default: %(default)s)',
    )
    p.add_argument("--out", default="runs/train", help="run directory (default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument(
        "--method",
        default=None,
        choices=list(METHODS),
        help="train one method of `inca compare` instead of the adapter plan (vqt, stochca, "
        "full, partial, lora, ...), with its own learning-rate sweep",
    )
    _add_method_options(p)
    _add_split_options(p, train_size=10_000, val_size=2_000)
    p.add_argument("--lr", type=float, default=1e-3, help="for plan entries without lr=")
    p.add_argument("--wd", type=float, default=0.05, help="for plan entries without wd=")
    p.add_argument("--max-ensemble", type=int, default=10, help="largest top-k ensemble tried")
    _add_training_options(p)
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
        type=int,
        default=1,
        help="repeat the plan with N seeds (cheap from the cache) and report mean ± std",
    )
    p.add_argument(
        "--cache-views",
        type=int,
        default=1,
        help="augmented views per training image in the cache (1: no augmentation)",
    )
    p.add_argument(
        "--cache-dtype",
        default="auto",
        choices=["auto", "float16", "bfloat16", "float32"],
        help="auto: bfloat16 when the backbone runs in bf16, else float16",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("cache", help="write activation caches of a dataset's splits to disk")
    _add_backbone_options(p)
    p.set_defaults(image_size=112)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--out", required=True, help="cache root: writes OUT/{train,val,test}")
    p.add_argument("--taps", default="block.*", help="tap names/globs (default: %(default)s)")
    p.add_argument("--splits", default="train,val,test")
    _add_split_options(p, train_size=10_000, val_size=2_000)
    p.add_argument("--views", type=int, default=1, help="augmented views per training image")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float16", "bfloat16", "float32"],
        help="auto: bfloat16 when the backbone runs in bf16, else float16",
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("compare", help="InCA against linear probing, VQT and fine-tuning methods")
    _add_backbone_options(p)
    p.set_defaults(image_size=112)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument(
        "--methods",
        default="linear,inca,vqt,partial,lora,full,stochca",
        help=f"comma-separated, from: {', '.join(METHODS)}",
    )
    p.add_argument("--out", default="runs/compare")
    _add_split_options(p, train_size=10_000, val_size=2_000)
    _add_training_options(p)  # the same budget and schedule for every method
    _add_method_options(p)
    p.add_argument(
        "--plans",
        default=None,
        help="the frozen-feature methods' plans, e.g. \"inca:inca taps=block.5 lr=1e-3 | "
        "linear:linear taps=block.* solver=lbfgs\" (default: the main job's grid; every block "
        "and pooling for the linear probe)",
    )
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser(
        "bench-memory", help="training-step peak memory: VQT, naive VQT, full fine-tuning, ..."
    )
    p.add_argument("--model", default="dinov2-small")
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--modes", default="inference,vqt,vqt-naive,full,stochca,lora")
    p.add_argument("--out", default="benchmarks/results/memory.json")
    p.set_defaults(func=cmd_bench_memory)

    p = sub.add_parser("bench", help="measure the one-to-many claims (R1-R4, the curve)")
    p.add_argument("--model", default="dinov2-small")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--train-size", type=int, default=1024)
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--out", default="benchmarks/results")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("eval", help="a run's saved tasks on a dataset split (one backbone pass)")
    p.add_argument("run", help="run directory (evaluates tasks/*) or one task directory")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument(
        "--data",
        default=None,
        help="another dataset with the same classes (default: the run's own data and split)",
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--precision", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="predict images with one or more tasks, one pass")
    p.add_argument("paths", nargs="+", help="task directories, then image files or folders")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--precision", default="auto")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_predict)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from inca.device import tune_cpu_allocator

    tune_cpu_allocator()
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
