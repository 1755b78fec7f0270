"""`inca compare`: InCA against linear probing, fine-tuning, LoRA, StochCA and VQT, in one
harness, on the user's data.

Every method sees the same data, preprocessing, splits and selection rule (best on validation;
test once), and each runs as its own literature runs it. Fine-tuning methods (and VQT, which
needs the backbone every step) get an epoch budget and a small learning-rate sweep chosen on
validation. Frozen-feature methods (the linear probe, InCA) train from one activation cache
until validation stops improving: their epochs cost a few percent of a backbone pass, so a
fixed few epochs would under-train them. The linear probe is fitted by L-BFGS on every block and
pooling; InCA trains its grid one-to-many with successive halving. Their reported cost includes
building the cache. Each method runs in its own process (its own peak memory) and writes
``<out>/<method>/result.json``: a finished method is never rerun while the options it was run
with are unchanged.

    inca compare --methods linear,inca,vqt,partial,lora,full,stochca --out runs/compare
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from inca.errors import IncaError
from inca.io import write_json
from inca.methods import get_method

COMMON = ("model", "data", "image_size", "train_size", "val_size", "test_size", "precision",
          "device")  # fmt: skip


def method_options(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """The options a method's result depends on: the common ones and its own budget. A result
    is reused only while these are unchanged (so retuning the frozen-feature budget does not
    invalidate hours of fine-tuning, and the reverse)."""
    own = {k: options.get(k) for k in COMMON}
    if get_method(method).from_tokens:
        own |= {"frozen": options.get("frozen"), "plan": plan_of(method, options)}
    else:
        own |= {"train": options.get("train"), "finetune": options.get("finetune")}
        own["lrs"] = (options.get("lrs") or {}).get(method)
    return json.loads(json.dumps(own))


def plan_of(method: str, options: dict[str, Any]) -> str:
    return (options.get("plans") or {}).get(method) or get_method(method).default_plan


def cache_taps(methods: list[str], options: dict[str, Any], taps: list[str]) -> list[str]:
    """Every tap any frozen-feature method of the comparison reads: their one shared cache."""
    from inca.train.plan import parse_plan

    wanted = {t for m in methods if get_method(m).from_tokens
              for s in parse_plan(plan_of(m, options), taps) for t in s.taps}  # fmt: skip
    return [t for t in taps if t in wanted]


def parse_methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    for m in methods:
        get_method(m)  # an unknown name is an error naming the registered ones
    return methods


def run_method(
    method: str, options: dict[str, Any], out: Path, resume: bool = True
) -> dict[str, Any]:
    """Train ``method`` (with its sweep), save its task, return its record. In this process.
    With ``resume``, runs interrupted before continue from their last finished epoch."""
    from inca.backbones import load_backbone
    from inca.data import make_splits
    from inca.methods.pixel_config import shared_options
    from inca.recipes.plan_run import train
    from inca.recipes.run_options import RunOptions
    from inca.select import accuracy
    from inca.tasks.finetuned import FineTunedTask
    from inca.train import TrainConfig
    from inca.train.finetune_run import fine_tune_sweep, predict_model

    cfg = TrainConfig(**options["train"])
    lrs = options.get("lrs", {}).get(method) or list(get_method(method).default_lrs)
    backbone = load_backbone(
        options["model"],
        image_size=options["image_size"],
        precision=options.get("precision", "auto"),
        device=options.get("device", "auto"),
    )
    start, shared = time.perf_counter(), False
    epochs, curve = cfg.epochs, None
    if get_method(method).from_tokens:
        cfg = TrainConfig(**options["frozen"])
        run_options = RunOptions(
            model=options["model"],
            data=options["data"],
            plan=plan_of(method, options),
            train_size=options["train_size"],
            val_size=options["val_size"],
            test_size=options.get("test_size"),
            image_size=options["image_size"],
            precision=options.get("precision", "auto"),
            device=options.get("device", "auto"),
            train=cfg,
            cache=str(options.get("cache") or out.parent / "cache"),
            cache_taps=tuple(options["cache_taps"]) if options.get("cache_taps") else None,
        )
        results = train(run_options, out, resume=resume, backbone=backbone)
        run, sel = results["run"], results["selection"]
        cache = run.get("cache", {})
        build = cache.get("build_seconds") or 0.0
        epochs = run.get("epochs", 0)
        curve = [{"seconds": build + p["seconds"], "val_acc": p["val_acc"]}
                 for p in run.get("curve", [])]  # fmt: skip
        best = next(a for a in results["adapters"] if a["name"] == sel["best"]["name"])
        rows = [
            {
                "method": method,
                "val_acc": sel["best"]["val_acc"],
                "test_acc": sel["best"]["test_acc"],
                "trainable_params": best["params"],
                "selected": best["name"],
                "task": str(out / "tasks" / "best"),
            }
        ]
        if method == "inca":
            ens = sel["ensemble"]
            params = sum(a["params"] for a in results["adapters"] if a["name"] in ens["members"])
            rows.append(
                {
                    "method": "inca-ensemble",
                    "val_acc": ens["val_acc"],
                    "test_acc": ens["test_acc"],
                    "trainable_params": params,
                    "selected": f"{ens.get('method', 'top-k')} {ens['k']}",
                    "task": str(out / "tasks" / "ensemble"),
                }
            )
        sweep = [{"name": a["name"], "val_acc": a["val_acc"]} for a in results["adapters"]]
        note = (
            f"{len(results['adapters'])} members ({run.get('budget', 'linear probes by L-BFGS')})"
            f", from an activation cache built in {build:.0f} s"
        )
        # the cost of this method alone: its run, less the time it spent opening (or building)
        # the cache, plus what building the cache cost, whichever method built it
        seconds = run["wall_time_s"] - cache.get("seconds", 0.0) + build
    else:
        splits = make_splits(
            options["data"],
            train_size=options["train_size"],
            val_size=options["val_size"],
            test_size=options.get("test_size"),
            seed=cfg.seed,
        )
        base = shared_options(method, options.get("finetune", {}))
        trained = fine_tune_sweep(backbone, splits, base, lrs, cfg, out, resume)
        sweep = [{"lr": r["config"]["lr"], "val_acc": r["val_acc"]} for _, r in trained]
        best_model, best_record = max(trained, key=lambda t: t[1]["val_acc"])  # first of ties
        probs, labels = predict_model(best_model, backbone, splits, cfg, "test")  # test once
        test_acc = accuracy(probs, labels)
        task = FineTunedTask(
            f"{options['data']}-{method}",
            method,
            backbone.identity(),
            splits.class_names,
            best_model.config,
            best_model.changed_state(),
            metrics={"val_acc": best_record["val_acc"], "test_acc": test_acc},
            data={"data": options["data"], "sizes": splits.sizes(), "seed": cfg.seed},
        )
        task.save(out / "task")
        rows = [
            {
                "method": method,
                "val_acc": best_record["val_acc"],
                "test_acc": test_acc,
                "trainable_params": best_record["trainable_params"],
                "selected": f"lr {best_record['config']['lr']:g}",
                "task": str(out / "task"),
            }
        ]
        shared = base.shares_backbone_pass(lrs)
        note = (
            f"{len(lrs)} learning rates trained at once from one backbone pass"
            if shared
            else f"{len(lrs)} learning rate(s), one run each"
        )
        seconds = time.perf_counter() - start
        curve = sweep_curve(out)
    from inca.device import machine_info
    from inca.process import peak_rss_mib

    for row in rows:
        task_dir = Path(row["task"])
        row |= {
            "machine": machine_info(backbone.device),
            "precision": backbone.precision.name,
            "train_time_s": seconds,
            "peak_rss_mib": peak_rss_mib(),
            "sweep": sweep,
            "task_bytes": sum(f.stat().st_size for f in task_dir.glob("*") if f.is_file()),
            "note": note,
            "epochs": epochs,
            "runs": 1 if get_method(method).from_tokens or shared else len(lrs),
        }
        if curve:
            row["curve"] = curve
    return {"method": method, "rows": rows, "options": method_options(method, options)}


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


def compare(
    methods: list[str], options: dict[str, Any], out: str | Path, in_process: bool = False
) -> dict[str, Any]:
    """Run each method (skipping finished ones), then write compare.json and the report."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "options.json"
    if saved.exists():  # results made on other data or backbone must not be mixed in
        before = json.loads(saved.read_text())
        now = json.loads(json.dumps(options))
        diff = sorted(k for k in COMMON if before.get(k) != now.get(k))
        if diff:
            raise IncaError(
                f"{out} holds a comparison made with other options "
                f"({', '.join(diff)} differ); use the same options or another --out"
            )
    if "cache_taps" not in options and any(get_method(m).from_tokens for m in methods):
        from inca.backbones import load_backbone

        taps = list(load_backbone(options["model"], image_size=options["image_size"]).taps)
        options = options | {"cache_taps": cache_taps(methods, options, taps)}
    write_json(saved, options)
    for method in methods:
        result_file = out / method / "result.json"
        if result_file.exists():
            done = json.loads(result_file.read_text())
            made_with = done.get("options") or legacy_options(method, json.loads(saved.read_text()))
            if made_with == method_options(method, options):
                print(f"{method}: done before, not rerun ({result_file})")
                continue
            kept = out / f"{method}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
            (out / method).rename(kept)  # its run directory would refuse the new options
            print(f"{method}: done before with other options (kept in {kept}); running it again")
        print(f"== {method} ==")
        if in_process:
            write_json(result_file, run_method(method, options, out / method))
        else:  # its own process: its own peak memory
            code = (
                "import json, sys; from pathlib import Path; from inca.recipes.compare import "
                "run_method, write_json; write_json(Path(sys.argv[3]) / 'result.json', "
                "run_method(sys.argv[1], json.loads(sys.argv[2]), Path(sys.argv[3])))"
            )
            done = subprocess.run(
                [sys.executable, "-c", code, method, json.dumps(options), str(out / method)]
            )
            if done.returncode != 0:
                raise IncaError(
                    f"method {method} failed (exit {done.returncode}); fix the "
                    "error above and rerun: finished methods are kept"
                )
    rows = [r for m in methods for r in json.loads((out / m / "result.json").read_text())["rows"]]
    frozen = options.get("frozen") or {}
    summary = {
        "options": options,
        "budget": (
            f"fine-tuning and VQT: {options['train']['epochs']} epochs; frozen-feature methods: "
            f"from the activation cache until {frozen.get('patience', 0)} optimizer steps pass "
            f"without a better validation accuracy (at most {frozen.get('epochs', '?')} epochs)"
        ),
        "rows": rows,
    }
    write_json(out / "compare.json", summary)
    from inca.compare_report import write_compare_report

    write_compare_report(summary, out)
    return summary


def legacy_options(method: str, saved: dict[str, Any]) -> dict[str, Any]:
    """What a result written before results recorded their options was made with: the old
    options.json, whose one "train" budget every method shared."""
    legacy = dict(saved)
    if get_method(method).from_tokens:
        legacy["frozen"] = saved.get("train")  # the old shared epoch budget
        legacy.pop("plans", None)
        return json.loads(json.dumps(method_options(method, legacy) | {"plan": "legacy"}))
    return method_options(method, legacy)


def default_options(
    model: str,
    data: str,
    image_size: int,
    train_size: int,
    val_size: float,
    test_size: int | None,
    config,
    frozen_config=None,
) -> dict[str, Any]:
    options = {
        "model": model,
        "data": data,
        "image_size": image_size,
        "train_size": train_size,
        "val_size": val_size,
        "test_size": test_size,
        "train": config.to_options(),
    }
    if frozen_config is not None:
        options["frozen"] = frozen_config.to_options()
    return options
