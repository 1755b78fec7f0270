"""A whole training run: data + backbone + plan -> trained adapters, selection, tasks, report.

The run directory holds ``plan.json`` (what was asked), ``log.jsonl`` (per-epoch metrics),
``checkpoint.safetensors`` (resume), ``results.json`` (every adapter: tap, kind, params, val and
test accuracy), ``tasks/best`` and ``tasks/ensemble`` (loadable with ``inca.load_task``), and
``report.md`` + ``accuracy_by_layer.png``.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from inca.backbones import Backbone, load_backbone
from inca.cache import ActivationCache, build_cache, cache_request
from inca.cache.format import read_header
from inca.data import Splits, make_splits
from inca.errors import IncaError
from inca.io import write_json
from inca.select import accuracy, ensemble_probs, rank, select_ensemble
from inca.train.engine import OneToManyTrainer, TrainConfig, predict_all
from inca.train.plan import DEFAULT_PLAN, parse_plan


def _task(
    trainer: OneToManyTrainer, name: str, method: str, members: list[str], metrics: dict, data: dict
):
    from inca.tasks import Task

    bank = trainer.bank
    return Task.from_adapters(
        name,
        method,
        trainer.backbone,
        trainer.splits.class_names,
        [(m, bank.specs[m].tap, bank.export_adapter(m)) for m in members],
        metrics=metrics,
        data=data,
    )


def train(
    model: str | Backbone = "dinov2-small",
    data: str = "fashion-mnist",
    plan: str = DEFAULT_PLAN,
    out: str | Path = "runs/train",
    train_size: int | None = 10_000,
    val_size: float | int = 2_000,
    test_size: int | None = None,
    image_size: int | None = 112,
    precision: str = "auto",
    device: str = "auto",
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    max_ensemble: int = 10,
    resume: bool = False,
    config: TrainConfig | None = None,
    cache: str | Path | None = None,
    cache_views: int = 1,
    cache_dtype: str = "auto",
) -> dict[str, Any]:
    """Train every adapter of ``plan`` at once and write the run directory; returns results.

    With ``cache``, the plan's taps of every split are read from activation caches in
    ``cache/{train,val,test}`` (built there first if absent): the backbone runs once, not once
    per epoch. The training cache holds ``cache_views`` views per image, augmented when there
    are several (epoch e reads view e mod views); with one view there is no augmentation.
    """
    config = config or TrainConfig()
    out = Path(out)
    started = time.perf_counter()
    if (out / "checkpoint.safetensors").exists() and not resume:
        raise IncaError(
            f"{out} already holds a run; pass --resume to continue it, or choose another --out"
        )
    backbone = (
        model
        if isinstance(model, Backbone)
        else load_backbone(
            model,
            precision=precision,
            device=device,
            **({"image_size": image_size} if image_size else {}),
        )
    )
    splits = make_splits(
        data, train_size=train_size, val_size=val_size, test_size=test_size, seed=config.seed
    )
    specs = parse_plan(plan, list(backbone.taps), lr=lr, weight_decay=weight_decay)
    data_info = {
        "data": data,
        "sizes": splits.sizes(),
        "seed": config.seed,
        "fingerprint": splits.train.dataset.fingerprint(),
    }
    signature = {
        "backbone": backbone.describe(),
        "plan": [s.to_dict() for s in specs],
        "data": data_info,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "plan.json", signature | {"plan_text": plan, "train": config.signature()})
    print(
        f"{data}: {splits.sizes()} images, {len(splits.class_names)} classes; "
        f"{backbone.name} at {backbone.preprocess.image_size} px, {backbone.precision.name} on "
        f"{backbone.device}; {len(specs)} adapters on {len({s.tap for s in specs})} taps"
    )

    caches = None
    if cache is not None:
        if cache_views == 1 and config.augment:
            config = TrainConfig(**(asdict(config) | {"augment": False}))
            print(
                "cached training with one view per image: no augmentation (--cache-views K "
                "caches K augmented views)"
            )
        taps = [t for t in backbone.taps if any(s.tap == t for s in specs)]
        caches = open_caches(backbone, splits, taps, Path(cache), cache_views, cache_dtype, config)
        signature["cache"] = {"views": cache_views, "dtype": cache_dtype}
    trainer = OneToManyTrainer(backbone, splits, specs, config, out, signature, caches)
    trainer.fit(resume=resume)
    trainer.load_best()
    return finish(trainer, out, max_ensemble, started, data_info)


def open_caches(
    backbone: Backbone,
    splits: Splits,
    taps: list[str],
    root: Path,
    views: int,
    dtype: str,
    config: TrainConfig,
) -> dict[str, ActivationCache]:
    """The activation cache of each split under ``root``: reused when it matches, finished when
    interrupted, built when absent, refused (with the differences) when it is another's."""
    caches = {}
    for split in ("train", "val", "test"):
        subset = getattr(splits, split)
        v = views if split == "train" else 1
        augment = split == "train" and v > 1
        directory = root / split
        if not (directory / "header.json").exists() or not read_header(directory)["complete"]:
            build_cache(
                backbone,
                subset,
                taps,
                directory,
                views=v,
                augment=augment,
                dtype=dtype,
                batch_size=config.eval_batch_size,
                seed=config.seed,
                workers=config.workers,
                progress=config.progress,
            )
        cache = ActivationCache(directory)
        cache.check(cache_request(backbone, subset, taps, dtype, v, augment, config.seed))
        caches[split] = cache
    return caches


def finish(
    trainer: OneToManyTrainer, out: Path, max_ensemble: int, started: float, data_info: dict
) -> dict[str, Any]:
    """Select on validation, compute test accuracy once, save tasks, results and report."""
    bank, backbone = trainer.bank, trainer.backbone
    val_probs, val_labels = trainer.best_val_probs, trainer.val_labels
    ensemble = select_ensemble(val_probs, val_labels, max_k=max_ensemble)
    best = rank(trainer.best_acc)[0]
    test_probs, test_labels = predict_all(trainer.source, bank, "test", trainer.config.progress)
    test_acc = {n: accuracy(p, test_labels) for n, p in test_probs.items()}
    ens_test = accuracy(ensemble_probs(test_probs, ensemble.members), test_labels)
    taps_order = list(backbone.taps)

    adapters = []
    for n, spec in bank.specs.items():
        adapters.append(
            spec.to_dict()
            | {
                "tap_index": taps_order.index(spec.tap),
                "params": bank.num_params(n),
                "best_epoch": trainer.best_epoch[n],
                "val_acc": trainer.best_acc[n],
                "test_acc": test_acc[n],
                "train_time_s": trainer.train_seconds,
            }
        )
    linear = [a for a in adapters if a["kind"] == "linear"]
    reference = None
    if linear:
        deepest = max(a["tap_index"] for a in linear)
        ref = max((a for a in linear if a["tap_index"] == deepest), key=lambda a: a["val_acc"])
        reference = {
            "name": ref["name"],
            "val_acc": ref["val_acc"],
            "test_acc": ref["test_acc"],
            "note": "linear probe on the deepest tap",
        }
    wall = time.perf_counter() - started
    results = {
        "run": {
            "backbone": backbone.describe(),
            **data_info,
            "epochs": trainer.config.epochs,
            "batch_size": trainer.config.batch_size,
            "augment": trainer.config.augment,
            "precision": backbone.precision.name,
            "device": str(backbone.device),
            "wall_time_s": wall,
            "train_time_s": trainer.train_seconds,
            "train_images_per_s": trainer.images_seen / max(trainer.train_seconds, 1e-9),
            "backbone_share_of_train_time": trainer.backbone_seconds
            / max(trainer.train_seconds, 1e-9),
            "taps_order": taps_order,
            "num_adapters": len(adapters),
        },
        "adapters": adapters,
        "selection": {
            "best": {"name": best, "val_acc": trainer.best_acc[best], "test_acc": test_acc[best]},
            "ensemble": {
                "members": ensemble.members,
                "k": ensemble.k,
                "val_acc": ensemble.val_acc,
                "test_acc": ens_test,
                "k_curve": ensemble.k_curve,
            },
        },
    }
    if reference:
        results["reference"] = reference
    metrics = {"val_acc": trainer.best_acc[best], "test_acc": test_acc[best]}
    _task(
        trainer, f"{data_info['data']}-{best}", bank.specs[best].kind, [best], metrics, data_info
    ).save(out / "tasks" / "best")
    _task(
        trainer,
        f"{data_info['data']}-ensemble{ensemble.k}",
        "ensemble",
        ensemble.members,
        {"val_acc": ensemble.val_acc, "test_acc": ens_test},
        data_info,
    ).save(out / "tasks" / "ensemble")
    write_json(out / "results.json", results)
    from inca.report import write_report

    write_report(results, out)
    return results
