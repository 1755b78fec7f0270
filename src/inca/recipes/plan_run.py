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
matrix), ``tasks/best`` and ``tasks/ensemble`` (loadable with ``inca.load_task``), and
``report.md`` + ``accuracy_by_layer.png`` + ``confusion.png``. ``TrainConfig.metric`` says what
ranks members in selection: accuracy, or balanced accuracy for imbalanced data. With ``seeds``
> 1 the plan is repeated with other training seeds (same splits, same cache) under
``seeds/seed<k>`` and ``results.json`` gains the mean ± std over seeds.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from inca.adapters.tap_groups import depth_index
from inca.backbones import Backbone, load_backbone
from inca.cache import ActivationCache
from inca.cache.split_caches import build_seconds, open_caches
from inca.data import Splits, make_splits
from inca.data.splits import SPLIT_RULE, data_record, scan_images
from inca.errors import IncaError
from inca.recipes.data_fit import auto_image_size
from inca.recipes.run_options import RunOptions
from inca.train.batch_sources import TokenSource
from inca.train.config import TrainConfig
from inca.train.grid_shard import gather_on_main
from inca.train.member import Member
from inca.train.metrics import balanced_accuracy, metrics_summary
from inca.train.one_to_many import adapter_trainer
from inca.train.plan import AdapterSpec, parse_plan
from inca.train.probes import fit_linear_probes
from inca.train.resume import check_resumable, holds_checkpoint
from inca.train.select import accuracy, choose_ensemble, rank, score_all
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


def _train(o: RunOptions, out: Path, resume: bool, backbone: Backbone | None) -> dict[str, Any]:
    data, plan, config, cache, seeds = o.data, o.plan, o.train, o.cache, o.seeds
    cache_views, cache_dtype, cache_taps = o.cache_views, o.cache_dtype, o.cache_taps
    started = time.perf_counter()
    if holds_checkpoint(out) and not resume:
        raise IncaError(
            f"{out} already holds a run; pass --resume to continue it, or choose another --out"
        )
    if backbone is None:
        image_size = o.image_size
        if image_size == "auto":
            image_size = auto_image_size(o.model, data, o.precision, o.device)
        size = {"image_size": image_size} if image_size else {}
        backbone = load_backbone(o.model, precision=o.precision, device=o.device, **size)
    rule = split_rule_of(out) if resume else SPLIT_RULE
    splits = make_splits(
        data, train_size=o.train_size, val_size=o.val_size, test_size=o.test_size,
        seed=config.seed, rule=rule,
    )  # fmt: skip
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
        if cache_views == 1 and config.augment:
            config = TrainConfig(**(asdict(config) | {"augment": False}))
            print(
                "cached training with one view per image: no augmentation (--cache-views K "
                "caches K augmented views)"
            )
        wanted = {t for s in specs for t in s.taps} | set(cache_taps or [])
        taps = [t for t in backbone.taps if t in wanted]
        t0 = time.perf_counter()
        caches = open_caches(
            backbone, splits, taps, Path(cache), cache_views, cache_dtype,
            config.eval_batch_size, config.seed, config.workers, config.progress,
        )  # fmt: skip
        cache_info = {
            "dir": str(cache),
            "views": cache_views,
            "dtype": caches["train"].dtype,
            "taps": taps,
            "bytes": sum(c.nbytes for c in caches.values()),
            "seconds": time.perf_counter() - t0,  # here: building, or opening a built one
            "build_seconds": build_seconds(Path(cache)),  # what building it cost, once
        }
        signature["cache"] = {"views": cache_views, "dtype": cache_dtype}
        print(
            f"activation cache {cache}: {len(taps)} taps, "
            f"{cache_info['bytes'] / 2**30:.2f} GiB on disk ({cache_info['seconds']:.0f} s)"
        )
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
) -> tuple[dict[str, Member], Trainer | None]:
    """Every member of the plan, trained: SGD members one-to-many, solved probes by L-BFGS.
    ``grid``: under torchrun each rank trains its slice of the SGD members, and rank 0 gathers
    them all (in plan order, as one process would hold them)."""
    out.mkdir(parents=True, exist_ok=True)
    sgd = [s for s in specs if not s.solved]
    solved = [s for s in specs if s.solved]
    members: dict[str, Member] = {}
    trainer = None
    if sgd:
        trainer = adapter_trainer(backbone, splits, sgd, config, out, signature, caches, grid)
        trainer.fit(resume=resume)
        trainer.load_best()
        test_probs, _ = trainer.predict("test")
        for n, spec in trainer.members.specs.items():
            if n in trainer.diverged:  # never selected, exported or reported as trained
                continue
            members[n] = Member(
                spec,
                trainer.members.export_adapter(n),
                trainer.best_acc[n],
                trainer.best_val_probs[n],
                test_probs[n],
                {"best_epoch": trainer.best_epoch[n], "dropped_after": trainer.dropped_at.get(n)},
            )
        if grid:
            gathered = gather_on_main(members)
            members = {s.name: gathered[s.name] for s in sgd if s.name in gathered}
    if solved and world().is_main:  # full-batch solvers: on rank 0, over whole splits
        taps = [t for t in backbone.taps if any(s.tap == t for s in solved)]
        source = TokenSource(backbone, splits, taps, config, caches, sharded=False)
        members |= fit_linear_probes(source, solved, len(splits.class_names), out, config.progress)
    return members, trainer


def finish(
    backbone: Backbone,
    splits: Splits,
    members: dict[str, Member],
    trainer: Trainer | None,
    out: Path,
    max_ensemble: int,
    started: float,
    data_info: dict,
    cache_info: dict | None = None,
    metric: str = "accuracy",
) -> dict[str, Any]:
    """Select on validation by ``metric``, compute test metrics once (accuracy and balanced
    accuracy of every member; recall per class and the confusion matrix of the picks), save
    tasks, results and report."""
    val_labels = torch.as_tensor(splits.val.labels, dtype=torch.long)  # split order, as the
    test_labels = torch.as_tensor(splits.test.labels, dtype=torch.long)  # probabilities' rows
    if not members:
        raise IncaError("every member of the plan diverged: lower the learning rates")
    val_probs = {n: m.val_probs for n, m in members.items()}
    test_probs = {n: m.test_probs for n, m in members.items()}
    # Member.val_acc is the value of the metric that picked its best epoch: accuracy only when
    # that metric is accuracy, so under another it is computed again here
    val_acc = (
        {n: m.val_acc for n, m in members.items()}
        if metric == "accuracy"
        else score_all(val_probs, val_labels, "accuracy")
    )
    val_bal = score_all(val_probs, val_labels, "balanced-accuracy")
    val_score = val_acc if metric == "accuracy" else score_all(val_probs, val_labels, metric)
    best = rank(val_score)[0]
    ensemble = choose_ensemble(val_probs, val_labels, max_k=max_ensemble, metric=metric)
    test_acc = {n: accuracy(p, test_labels) for n, p in test_probs.items()}
    test_bal = {n: balanced_accuracy(p, test_labels) for n, p in test_probs.items()}
    ens_val_bal = balanced_accuracy(ensemble.probs(val_probs), val_labels)
    ens_test_probs = ensemble.probs(test_probs)  # (N_test, C)
    ens_test = accuracy(ens_test_probs, test_labels)
    names = list(splits.class_names)
    best_detail = _test_detail(metrics_summary(test_probs[best], test_labels, names))
    ens_detail = _test_detail(metrics_summary(ens_test_probs, test_labels, names))
    taps_order = list(backbone.taps)

    adapters = []
    for n, m in members.items():
        adapters.append(
            m.spec.to_dict()
            | {
                "tap_index": depth_index(m.spec.tap, taps_order),
                "params": m.adapter.num_params(),
                "val_acc": val_acc[n],
                "test_acc": test_acc[n],
                "val_balanced_acc": val_bal[n],
                "test_balanced_acc": test_bal[n],
            }
            | {k: v for k, v in m.info.items() if v is not None}
        )
    linear = [a for a in adapters if a["kind"] == "linear"]
    reference = None
    if linear:
        ref = max(linear, key=lambda a: (val_score[a["name"]], a["tap_index"]))
        reference = {
            "name": ref["name"],
            "val_acc": ref["val_acc"],
            "test_acc": ref["test_acc"],
            "val_balanced_acc": ref["val_balanced_acc"],
            "test_balanced_acc": ref["test_balanced_acc"],
            "note": f"the linear probe with the best validation {metric.replace('-', ' ')}",
        }
    wall = time.perf_counter() - started
    run: dict[str, Any] = {
        "backbone": backbone.describe(),
        **data_info,
        "batch_size": trainer.config.batch_size if trainer else None,
        "precision": backbone.precision.name,
        "device": str(backbone.device),
        "wall_time_s": wall,
        "taps_order": taps_order,
        "num_adapters": len(adapters),
    }
    if trainer is not None:
        cfg, budget = trainer.config, trainer.budget
        run |= {
            "epochs": trainer.epoch,
            "max_epochs": budget.max_epochs,
            "steps": trainer.step,
            "stopped": trainer.stopped or "epoch cap",
            "budget": budget.describe(),
            "augment": cfg.augment,
            "train_time_s": trainer.train_seconds,
            "val_time_s": trainer.val_seconds,
            "train_images_per_s": trainer.images_seen / max(trainer.train_seconds, 1e-9),
            "backbone_share_of_train_time": trainer.backbone_seconds
            / max(trainer.train_seconds, 1e-9),
            "curve": trainer.curve,
        }
    if trainer is not None and trainer.diverged:
        run["diverged"] = trainer.diverged  # member -> epoch: left out of everything above
    if cache_info:
        run["cache"] = cache_info
    ensemble_record = {
        "members": ensemble.members,
        "weights": ensemble.weights,
        "method": ensemble.method,
        "k": ensemble.k,
        "val_acc": ensemble.val_acc,
        "test_acc": ens_test,
        "val_balanced_acc": ens_val_bal,
        **ens_detail,
        "k_curve": ensemble.k_curve,
        "alternatives": ensemble.alternatives,  # each method's validation metric
    }
    best_record = {
        "name": best,
        "val_acc": val_acc[best],
        "test_acc": test_acc[best],
        "val_balanced_acc": val_bal[best],
        **best_detail,
    }
    results = {
        "run": run,
        "adapters": adapters,
        "classes": {
            "names": names,
            "test_counts": torch.bincount(test_labels, minlength=len(names)).tolist(),
        },
        "selection": {"metric": metric, "best": best_record, "ensemble": ensemble_record},
    }
    if reference:
        results["reference"] = reference
    task_data = data_record(data_info["data"], splits, data_info["seed"],
                            data_info.get("split_rule", 1))  # fmt: skip
    _task(backbone, splits, members, f"{data_info['data']}-{best}", members[best].spec.kind,
          [best], None, {"val_acc": val_acc[best], "test_acc": test_acc[best],
                         "test_balanced_acc": test_bal[best]},
          task_data).save(out / "tasks" / "best")  # fmt: skip
    _task(backbone, splits, members, f"{data_info['data']}-ensemble{ensemble.k}", "ensemble",
          ensemble.members, ensemble.weights,
          {"val_acc": ensemble.val_acc, "test_acc": ens_test,
           "test_balanced_acc": ens_detail["test_balanced_acc"]}, task_data,
          ).save(out / "tasks" / "ensemble")  # fmt: skip
    write_results(results, out)
    return results


# a confusion matrix of more classes is left out of results.json (K² counts; the recall per class
# stays): 1000 ImageNet classes would make two matrices of a million counts each
MAX_CONFUSION_CLASSES = 100


def _test_detail(summary: dict[str, Any]) -> dict[str, Any]:
    """The test record of a pick beyond its accuracy, from ``metrics_summary``."""
    detail = {"test_balanced_acc": summary["balanced_accuracy"], "test_recall": summary["recall"]}
    if len(summary["recall"]) <= MAX_CONFUSION_CLASSES:
        detail["test_confusion"] = summary["confusion"]
    return detail


def write_results(results: dict[str, Any], out: Path) -> None:
    """``results.json`` and the report made from it."""
    from inca.report.run import write_report

    write_json(out / "results.json", results)
    write_report(results, out)


def _task(
    backbone: Backbone,
    splits: Splits,
    members: dict[str, Member],
    name: str,
    method: str,
    chosen: list[str],
    weights: list[float] | None,
    metrics: dict,
    data: dict,
):
    from inca.tasks import Task

    return Task.from_adapters(
        name,
        method,
        backbone,
        splits.class_names,
        [(m, members[m].spec.tap, members[m].adapter) for m in chosen],
        metrics=metrics,
        data=data,
        weights=weights,
    )


def seed_summary(runs: list[dict[str, Any]], first_seed: int) -> dict[str, Any]:
    """Mean ± std over seeds of what a user compares: the selected single member, the
    ensemble, and the best linear probe."""

    def stats(values: list[float]) -> dict[str, Any]:
        return {
            "values": values,
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        }

    out: dict[str, Any] = {"seeds": list(range(first_seed, first_seed + len(runs)))}
    for key, pick in (
        ("best", lambda r: r["selection"]["best"]),
        ("ensemble", lambda r: r["selection"]["ensemble"]),
        ("linear", lambda r: r.get("reference")),
    ):
        picked = [pick(r) for r in runs]
        if all(picked):
            out[key] = {
                "val_acc": stats([p["val_acc"] for p in picked]),
                "test_acc": stats([p["test_acc"] for p in picked]),
            }
            if all("test_balanced_acc" in p for p in picked):
                out[key]["test_balanced_acc"] = stats([p["test_balanced_acc"] for p in picked])
    return out
