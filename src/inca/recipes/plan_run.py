"""A whole training run: data + backbone + plan -> trained adapters, selection, tasks, report.

By default the run builds (or reuses) an activation cache of exactly the taps the plan reads,
then trains from it: the backbone runs once per image, not once per epoch. Adapters that train by
SGD go through the one-to-many trainer (with its budget: patience, successive halving); linear
probes with ``solver=lbfgs`` are fitted to convergence on pooled cached features. Every member,
however trained, enters the same selection on validation: the best single member and the best
ensemble (top-k or greedy with replacement). Test accuracy is computed once.

The run directory holds ``plan.json`` (what was asked), ``log.jsonl`` (per-epoch metrics),
``checkpoint.safetensors`` (resume), ``probes.json`` (the linear probes' fits),
``results.json`` (every member: tap, kind, params, val and test accuracy and balanced accuracy,
and the run's cost and validation curve; for the picks, recall per class and the test confusion
matrix), ``tasks/best`` and ``tasks/ensemble`` (loadable with ``inca.load_task``), ``members/``
(every member and its validation and test probabilities, for ``inca ensemble``), and
``report.md`` + ``accuracy_by_layer.png`` + ``confusion.png``. ``TrainConfig.metric`` says what
ranks members in selection: accuracy, or balanced accuracy for imbalanced data. With ``seeds``
> 1 the plan is repeated with other training seeds (same splits, same cache) under
``seeds/seed<k>`` and ``results.json`` gains the mean ± std over seeds.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from inca.backbones import Backbone, load_backbone
from inca.cache import ActivationCache
from inca.cache.split_caches import build_seconds, open_caches
from inca.data import Splits, make_splits
from inca.data.splits import SPLIT_RULE, scan_images
from inca.data.views import views_of
from inca.errors import IncaError
from inca.recipes.plan_results import finish, seed_summary, write_results
from inca.recipes.run_options import RunOptions
from inca.train.batch_sources import TokenSource
from inca.train.candidate import Candidate
from inca.train.config import TrainConfig
from inca.train.grid_shard import gather_on_main
from inca.train.one_to_many import adapter_trainer
from inca.train.plan import AdapterSpec, default_plan_for, parse_plan
from inca.train.probes import fit_linear_probes
from inca.train.resume import check_resumable, holds_checkpoint
from inca.train.trainer import Trainer
from inca.utils.distributed import agree, world
from inca.utils.io import write_json
from inca.utils.run_lock import exclusive


def run_plan(
    options: RunOptions | None = None,
    out: str | Path = "runs/train",
    resume: bool = False,
    backbone: Backbone | None = None,
) -> dict[str, Any]:
    """Train every adapter of ``options.plan`` at once and write the run directory (its
    options, resolved, in ``run.json``); returns results. ``backbone``: an already loaded one
    (else ``options.model`` is loaded as the options say).

    With ``options.cache``, the plan's taps of every split are read from activation caches in
    ``cache/{train,val,test}`` (built there first if absent): the backbone runs once, not once
    per epoch. The training cache holds ``cache_views`` views per image, augmented when there
    are several (epoch e reads view e mod views); with one view there is no augmentation.
    ``cache_taps`` adds taps to the cache beyond the plan's (a cache shared by several runs).
    """
    o = options or RunOptions()
    with exclusive(out, "run"):  # one writer per run directory, for the whole run
        return _train(o, Path(out), resume, backbone)


def split_rule_of(out: Path) -> int:
    """The split rule a run in ``out`` was started with (its plan.json; 1 before the rule was
    recorded), so a resumed run trains and validates on the very images it began with."""
    saved = out / "plan.json"
    if not saved.exists():
        return SPLIT_RULE
    return json.loads(saved.read_text()).get("data", {}).get("split_rule", 1)


def _cached(
    o: RunOptions, backbone: Backbone, splits: Splits, specs: list[AdapterSpec], config: TrainConfig
) -> tuple[TrainConfig, dict[str, ActivationCache], dict[str, Any]]:
    """The activation caches of the plan's taps (built first if absent), what they hold, and
    the config cached training runs with (one view per image: no augmentation)."""
    cache = Path(o.cache)
    if o.cache_views == 1 and config.augment:
        config = TrainConfig(**(asdict(config) | {"augment": False}))
        print(
            "cached training with one view per image: no augmentation (--cache-views K "
            "caches K augmented views)"
        )
    if config.views != "none":
        k = len(views_of(config.views))
        print(
            f"--views {config.views}: each training image cached {k} times (x{k} extraction "
            "and disk)" + (", validation and test too (--test-views)" if config.test_views else "")
        )
    wanted = {t for s in specs for t in s.taps} | set(o.cache_taps or [])
    taps = [t for t in backbone.taps if t in wanted]
    t0 = time.perf_counter()
    if o.cache_views > 1 and config.views != "none":
        raise IncaError(
            f"--cache-views {o.cache_views} caches augmented views and --views {config.views} "
            "exact ones; choose one of the two"
        )
    caches = open_caches(
        backbone, splits, taps, cache, o.cache_views, o.cache_dtype,
        config.eval_batch_size, config.seed, config.workers, config.progress,
        config.views, config.test_views,
    )  # fmt: skip
    info = {
        "dir": str(o.cache),
        "views": o.cache_views,
        "dtype": caches["train"].dtype,
        "taps": taps,
        "bytes": sum(c.nbytes for c in caches.values()),
        "seconds": time.perf_counter() - t0,  # here: building, or opening a built one
        "build_seconds": build_seconds(cache),  # what building it cost, once
    }
    print(
        f"activation cache {o.cache}: {len(taps)} taps, "
        f"{info['bytes'] / 2**30:.2f} GiB on disk ({info['seconds']:.0f} s)"
    )
    return config, caches, info


def _train(o: RunOptions, out: Path, resume: bool, backbone: Backbone | None) -> dict[str, Any]:
    data, plan, config, cache, seeds = o.data, o.plan, o.train, o.cache, o.seeds
    cache_views, cache_dtype = o.cache_views, o.cache_dtype
    started = time.perf_counter()
    if holds_checkpoint(out) and not resume:
        raise IncaError(
            f"{out} already holds a run; pass --resume to continue it, or choose another --out"
        )
    if backbone is None:
        image_size = o.resolved_image_size()
        size = {"image_size": image_size} if image_size else {}
        size |= o.backbone_options()
        backbone = load_backbone(o.model, precision=o.precision, device=o.device, **size)
    rule = split_rule_of(out) if resume else SPLIT_RULE
    splits = make_splits(
        data, train_size=o.train_size, val_size=o.val_size, test_size=o.test_size,
        seed=config.seed, rule=rule,
    )  # fmt: skip
    plan = default_plan_for(plan, backbone.num_prefix_tokens)  # a CNN: no CLS features
    specs = parse_plan(plan, backbone.taps, lr=o.lr, weight_decay=o.weight_decay)
    scan_images(splits)  # a corrupt val/test image stops the run now, not after an epoch
    data_info = {
        "data": data,
        "sizes": splits.sizes(),
        "seed": config.seed,
        "fingerprint": splits.train.dataset.fingerprint(),
    } | ({"split_rule": rule} if rule != 1 else {})  # rule 1: signatures from before the rule
    signature = {
        "backbone": backbone.describe(),
        "plan": [s.to_dict() for s in specs],
        "data": data_info,
    }
    print(
        f"{data}: {splits.sizes()} images, {len(splits.class_names)} classes; "
        f"{backbone.name} at {backbone.preprocess.image_size} px, {backbone.precision.name} on "
        f"{backbone.device}; {len(specs)} adapters on "
        f"{len({t for s in specs for t in s.taps})} taps"
    )

    config = config.fitted_to(len(splits.train))
    caches, cache_info = None, None
    if cache is not None:
        config, caches, cache_info = _cached(o, backbone, splits, specs, config)
        signature["cache"] = {"views": cache_views, "dtype": cache_dtype}
    grid = o.shard == "adapters" and world().distributed
    if grid:  # a resume needs the same slices: the same number of ranks
        signature["shard"] = {"adapters": world().size}
    out.mkdir(parents=True, exist_ok=True)
    agree(signature | {"plan_text": plan, "train": config.signature()}, "the run's options")
    if resume:  # a refused resume must change nothing: check before writing anything
        check_resumable(out, signature, config, world().rank if grid else None)
    if world().is_main:  # under torchrun rank 0 alone writes the run directory
        write_json(out / "plan.json", signature | {"plan_text": plan, "train": config.signature()})
        ran = replace(o, train=config, image_size=backbone.preprocess.image_size)
        write_json(out / "run.json", ran.to_dict())  # resolved: as it ran

    runs = []
    for k in range(seeds):
        run_out = out if k == 0 else out / "seeds" / f"seed{config.seed + k}"
        run_config = TrainConfig(**(asdict(config) | {"seed": config.seed + k}))
        if k:
            print(f"== seed {config.seed + k} ({k + 1}/{seeds}) ==")
        members, trainer = train_members(
            backbone, splits, specs, run_config, run_out, signature, caches, resume, grid
        )
        if not world().is_main:
            continue  # trained in step with rank 0, which selects, saves and reports
        runs.append(
            finish(
                backbone, splits, members, trainer, run_out, o.max_ensemble, started, data_info,
                cache_info, metric=config.metric,
                test_views=config.views if config.test_views else "none",
            )
        )  # fmt: skip
    if not runs:
        return {}  # a rank other than 0
    results = runs[0]
    if seeds > 1:
        results["seeds"] = seed_summary(runs, config.seed)
        write_results(results, out)
    return results


def train_members(
    backbone: Backbone,
    splits: Splits,
    specs: list[AdapterSpec],
    config: TrainConfig,
    out: Path,
    signature: dict[str, Any],
    caches: dict[str, ActivationCache] | None,
    resume: bool,
    grid: bool = False,
) -> tuple[dict[str, Candidate], Trainer | None]:
    """Every member of the plan, trained: SGD members one-to-many, solved probes by L-BFGS.
    ``grid``: under torchrun each rank trains its slice of the SGD members, and rank 0 gathers
    them all (in plan order, as one process would hold them)."""
    out.mkdir(parents=True, exist_ok=True)
    sgd = [s for s in specs if not s.solved]
    solved = [s for s in specs if s.solved]
    members: dict[str, Candidate] = {}
    trainer = None
    if sgd:
        trainer = adapter_trainer(backbone, splits, sgd, config, out, signature, caches, grid)
        trainer.fit(resume=resume)
        trainer.load_best()
        test_probs, _ = trainer.predict("test")
        one_view = (
            {split: trainer.predict(split, one_view=True)[0] for split in ("val", "test")}
            if config.test_views else None
        )  # fmt: skip
        for n, spec in trainer.members.specs.items():
            if n in trainer.progress.diverged:  # never selected, exported or reported as trained
                continue
            members[n] = Candidate(
                spec,
                trainer.members.export_adapter(n),
                trainer.progress.best_acc[n],
                trainer.best_val_probs[n],
                test_probs[n],
                {
                    "best_epoch": trainer.progress.best_epoch[n],
                    "dropped_after": trainer.progress.dropped_at.get(n),
                },
                one_view={k: v[n] for k, v in one_view.items()} if one_view else None,
            )
        if grid:
            gathered = gather_on_main(members)
            members = {s.name: gathered[s.name] for s in sgd if s.name in gathered}
    if solved and world().is_main:  # full-batch solvers: on rank 0, over whole splits
        taps = [t for t in backbone.taps if any(s.tap == t for s in solved)]
        source = TokenSource(backbone, splits, taps, config, caches, sharded=False)
        members |= fit_linear_probes(source, solved, len(splits.class_names), out, config.progress)
    return members, trainer
