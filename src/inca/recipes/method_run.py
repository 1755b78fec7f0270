"""One method of the comparison, trained in this process: its whole search (a frozen-feature
plan from the shared activation cache, or a fine-tuning method's learning-rate sweep), its
saved task, and the record the comparison's table is made of.

``inca train --plan "full lr=2e-5,5e-5"`` runs a method trained from pixels through here too,
so the comparison and the command line train a method the same way."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from inca.errors import IncaError
from inca.methods import get_method
from inca.recipes.compare_options import CompareOptions
from inca.recipes.data_options import DATA_FIELDS
from inca.utils.distributed import barrier, gather_values, world
from inca.utils.run_lock import exclusive

COMMON = DATA_FIELDS  # what every method of a comparison shares


def plan_of(method: str, options: CompareOptions) -> str:
    """The plan ``method`` trains: the one given for it, else its default (pixel methods: their
    name alone, i.e. their default rates and config)."""
    return options.plans.get(method) or get_method(method).default_plan or method


def method_options(method: str, options: CompareOptions | dict[str, Any]) -> dict[str, Any]:
    """The options a method's result depends on: the common ones and its own budget and plan.
    A result is reused only while these are unchanged (so retuning the frozen-feature budget
    does not invalidate hours of fine-tuning, and the reverse). Pixel methods keep the keys
    their results have always recorded ("lrs", "finetune": None when not given)."""
    if isinstance(options, dict):
        options = CompareOptions.from_dict(options)
    saved = options.to_dict()
    own = {k: saved.get(k) for k in COMMON}
    if get_method(method).from_tokens:
        own |= {"frozen": saved.get("frozen"), "plan": plan_of(method, options)}
    else:
        plan = options.sweep_plan(method) if method in options.plans else None
        own |= {"train": saved["train"], "finetune": (plan.options or None) if plan else None}
        own["lrs"] = list(plan.lrs) if plan and plan.lrs_given else None
    return json.loads(json.dumps(own))


def run_method(
    method: str, options: CompareOptions, out: Path, resume: bool = True
) -> dict[str, Any]:
    """Train ``method`` (its whole search), save its task, return its record: rows for the
    table, and the options they depend on. With ``resume``, runs interrupted before continue
    from their last finished epoch."""
    from inca.backbones import load_backbone
    from inca.utils.device import machine_info
    from inca.utils.process import peak_memory, reset_peak_memory

    reset_peak_memory()  # this method's own peak, when others ran in this process before
    backbone = load_backbone(
        options.model,
        image_size=options.image_size,
        precision=options.precision,
        device=options.device,
        **options.backbone_options(),
    )
    start = time.perf_counter()
    run = frozen_rows if get_method(method).from_tokens else finetune_rows
    with exclusive(out, "method"):
        rows, shared = run(method, options, out, backbone, resume, start)
    per_rank = gather_values(peak_memory())  # under torchrun: every rank's, in rank order
    for row in rows:
        task_dir = Path(row["task"])
        row |= {
            "machine": machine_info(backbone.device),
            "precision": backbone.precision.name,
            **{k: max(p[k] for p in per_rank) for k in per_rank[0]},  # the largest rank's
            "task_bytes": sum(f.stat().st_size for f in task_dir.glob("*") if f.is_file()),
            "runs": shared,
        }
        if len(per_rank) > 1:
            row["peak_memory_per_rank"] = per_rank
    return {"method": method, "rows": rows, "options": method_options(method, options)}


def frozen_rows(
    method: str, options: CompareOptions, out: Path, backbone: Any, resume: bool, start: float
) -> tuple[list[dict[str, Any]], int]:
    """A frozen-feature method: its plan, one-to-many from the comparison's shared cache, run
    by the main job's recipe (``run_plan`` with the main job's budget, halving, patience and
    selection), so its rows are the main job's picks to the digit: ``inca`` the best member
    and the ensemble, ``linear`` the reference probe."""
    from inca.recipes.plan_run import run_plan
    from inca.recipes.run_options import RunOptions

    run_options = RunOptions(
        **options.data_options(),
        plan=plan_of(method, options),
        train=options.frozen,
        cache=options.cache or str(out.parent / "cache"),
        cache_taps=options.cache_taps,
    )
    results = run_plan(run_options, out, resume=resume, backbone=backbone)
    if not results:
        return [], 1  # a torchrun rank other than 0: rank 0 reports the rows
    run, sel = results["run"], results["selection"]
    params = {a["name"]: a["params"] for a in results["adapters"]}
    picks = [("linear", results.get("reference"), "best")] if method == "linear" else [
        (method, sel["best"], "best")]  # fmt: skip
    if method == "inca":
        picks.append(("inca-ensemble", sel["ensemble"], "ensemble"))
    kinds = {a["name"]: a["kind"] for a in results["adapters"]}
    seconds, probes_s, note = frozen_cost(run, out)
    build = run.get("cache", {}).get("build_seconds") or 0.0
    curve = [{"seconds": build + p["seconds"], "val_acc": p["val_acc"]}
             for p in run.get("curve", [])]  # fmt: skip
    common = {
        "sweep": [{"name": a["name"], "val_acc": a["val_acc"]} for a in results["adapters"]],
        "epochs": run.get("epochs", 0),
        "metric": sel.get("metric", "accuracy"),
        **({"probes_time_s": probes_s} if probes_s else {}),
        **({"curve": curve} if curve else {}),
    }
    rows = []
    for name, pick, task in picks:
        pick = pick or sel["best"]  # a linear plan of other kinds only: its best member
        members = pick["members"] if "members" in pick else [pick["name"]]
        # the reference probes a plan fits too are the linear row's cost, not a pick's that
        # uses none of them (an InCA pick; a greedy ensemble may use one)
        unused = probes_s > 0 and all(kinds[m] != "linear" for m in members)
        rows.append({
            "method": name, **{k: pick[k] for k in SCORES if k in pick},
            "trainable_params": sum(params[m] for m in set(members)),
            "selected": f"{pick.get('method', 'top-k')} {pick['k']}" if "k" in pick
            else pick["name"], "task": str(out / "tasks" / task),
            "train_time_s": seconds - probes_s if unused else seconds,
            "note": note + (f"; its plan's linear probes ({probes_s:.0f} s) are the linear "
                            "row's cost" if unused else ""),
            **common,
        })  # fmt: skip
    return rows, 1


SCORES = ("val_acc", "test_acc", "val_balanced_acc", "test_balanced_acc")


def frozen_cost(run: dict[str, Any], out: Path) -> tuple[float, float, str]:
    """What a frozen-feature run cost (seconds): the run less the time it spent opening (or
    building) the shared cache, plus what building the cache cost, whichever method built it
    (the main job's cost); the linear probes' share of it; the note saying so."""
    cache = run.get("cache", {})
    build = cache.get("build_seconds") or 0.0
    seconds = run["wall_time_s"] - cache.get("seconds", 0.0) + build
    probes = out / "probes.json"
    probes_s = json.loads(probes.read_text())["seconds"] if probes.exists() else 0.0
    what = run.get("budget", "linear probes by L-BFGS")
    note = f"{run['num_adapters']} members ({what}), from an activation cache built in "
    note += f"{build:.0f} s"
    return seconds, probes_s, note


def finetune_rows(
    method: str, options: CompareOptions, out: Path, backbone: Any, resume: bool, start: float
) -> tuple[list[dict[str, Any]], int]:
    """A method trained from pixels: its learning-rate sweep, the best rate on validation,
    tested once."""
    from inca.data import make_splits
    from inca.data.splits import data_record, scan_images
    from inca.tasks.finetuned import FineTunedTask
    from inca.train.metrics import balanced_accuracy
    from inca.train.pixel_members import predict_model
    from inca.train.pixel_sweep import fine_tune_sweep
    from inca.train.select import accuracy

    cfg = options.train
    if cfg.test_views:
        raise IncaError(
            f"--test-views averages adapter tasks over views; {method} saves a fine-tuned model "
            "that predicts one view: train it with --views alone (views as augmentation)"
        )
    plan = options.sweep_plan(method)
    lrs = list(plan.lrs)
    splits = make_splits(options.data, train_size=options.train_size,
                         val_size=options.val_size, test_size=options.test_size,
                         seed=cfg.seed)  # fmt: skip
    scan_images(splits)
    cfg = cfg.fitted_to(len(splits.train))
    base = plan.config()
    trained = fine_tune_sweep(backbone, splits, base, lrs, cfg, out, resume)
    best_model, best = max(trained, key=lambda t: t[1].get("val_score", t[1]["val_acc"]))
    probs, labels = predict_model(best_model, backbone, splits, cfg, "test")  # test once
    test_acc = accuracy(probs, labels)
    test_balanced = balanced_accuracy(probs, labels)
    task = FineTunedTask(
        f"{options.data}-{method}",
        method,
        backbone.identity(),
        splits.class_names,
        best_model.config,
        best_model.changed_state(),
        metrics={
            "val_acc": best["val_acc"],
            "test_acc": test_acc,
            "test_balanced_acc": test_balanced,
        },  # fmt: skip
        data=data_record(options.data, splits, cfg.seed),
    )
    if world().is_main:  # under torchrun every rank holds the same model; rank 0 saves it
        task.save(out / "task")
    barrier()
    shared = base.shares_backbone_pass(lrs)
    row = {
        "method": method,
        "val_acc": best["val_acc"],
        "test_acc": test_acc,
        **({"val_balanced_acc": best["val_balanced_acc"]} if "val_balanced_acc" in best else {}),
        "test_balanced_acc": test_balanced,
        "metric": cfg.metric,
        "trainable_params": best["trainable_params"],
        "selected": f"lr {best['config']['lr']:g}",
        "task": str(out / "task"),
        "sweep": [{"lr": r["config"]["lr"], "val_acc": r["val_acc"]} for _, r in trained],
        "note": f"{len(lrs)} learning rates trained at once from one backbone pass"
        if shared
        else f"{len(lrs)} learning rate(s), one run each",
        "train_time_s": time.perf_counter() - start,
        "epochs": cfg.epochs,
    }
    curve = sweep_curve(out)
    if curve:
        row["curve"] = curve
    return [row], 1 if shared else len(lrs)


def sweep_curve(out: Path) -> list[dict[str, float]] | None:
    """Validation accuracy (best so far over the sweep) against cumulative training seconds,
    from the runs' logs in the order they ran; None for logs written before they kept time."""
    curve, offset, best = [], 0.0, 0.0
    for log in sorted(out.glob("lr*/log.jsonl"), key=lambda p: p.stat().st_mtime):
        last = 0.0
        for line in log.read_text().splitlines():
            entry = json.loads(line)
            if "seconds" not in entry:
                return None
            accs = entry.get("val_acc", entry.get("val_acc_by_lr"))  # older logs: one number
            accs = list(accs.values()) if isinstance(accs, dict) else [accs]
            best = max(best, *accs)
            last = entry["seconds"]
            curve.append({"seconds": offset + last, "val_acc": best})
        offset += last
    return curve or None
