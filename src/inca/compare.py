"""`inca compare`: InCA against linear probing, fine-tuning, LoRA, StochCA and VQT, in one
harness, on the user's data.

Every method sees the same data, preprocessing, splits, seeds, batch order, epoch budget and
selection rule (best on validation; test once). Methods that need a learning rate sweep get a
small one, chosen on validation; VQT trains its whole sweep from one backbone pass, as InCA
trains its adapters. Each method runs in its own process, so its peak memory is its
own, and writes ``<out>/<method>/result.json``: a finished method is never rerun.

    inca compare --methods linear,inca,vqt,partial,lora,full,stochca --out runs/compare
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from inca.errors import IncaError, UnknownNameError
from inca.io import write_json

# method -> (kind, default learning rates swept)
METHODS: dict[str, tuple[str, list[float]]] = {
    "linear": ("plan", [1e-3, 1e-2]),
    "inca": ("plan", [1e-3]),
    "partial": ("finetune", [1e-4, 3e-4]),
    "lora": ("finetune", [3e-4, 1e-3]),
    "full": ("finetune", [2e-5, 5e-5]),
    "stochca": ("finetune", [2e-5, 5e-5]),  # full fine-tuning's sweep, p = 0.1
    "vqt": ("finetune", [1e-3, 1e-2]),  # queries and head share the rate
}
PLANS = {"linear": "linear taps=block.*[-1:] lr={lrs}", "inca": "inca taps=block.* lr={lrs}"}


def parse_methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            raise UnknownNameError("method", m, METHODS)
    return methods


def run_method(
    method: str, options: dict[str, Any], out: Path, resume: bool = True
) -> dict[str, Any]:
    """Train ``method`` (with its sweep), save its task, return its record. In this process.
    With ``resume``, runs interrupted before continue from their last finished epoch."""
    from inca.backbones import load_backbone
    from inca.data import make_splits
    from inca.finetune.config import FineTuneConfig
    from inca.finetune.train import evaluate, fine_tune_sweep
    from inca.finetune.vqt_sweep import shares_backbone_pass
    from inca.select import accuracy
    from inca.tasks.finetuned import FineTunedTask
    from inca.train import TrainConfig, train

    cfg = TrainConfig(**options["train"])
    lrs = options.get("lrs", {}).get(method) or METHODS[method][1]
    backbone = load_backbone(
        options["model"],
        image_size=options["image_size"],
        precision=options.get("precision", "auto"),
        device=options.get("device", "auto"),
    )
    start, shared = time.perf_counter(), False
    if METHODS[method][0] == "plan":
        plan = PLANS[method].format(lrs=",".join(str(lr) for lr in lrs))
        results = train(
            backbone,
            options["data"],
            plan,
            out,
            options["train_size"],
            options["val_size"],
            options.get("test_size"),
            config=cfg,
            resume=resume,
        )
        sel = results["selection"]
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
                    "selected": f"top-{ens['k']}",
                    "task": str(out / "tasks" / "ensemble"),
                }
            )
        sweep = [{"name": a["name"], "val_acc": a["val_acc"]} for a in results["adapters"]]
        note = f"{len(results['adapters'])} adapters trained at once from one backbone pass"
    else:
        splits = make_splits(
            options["data"],
            train_size=options["train_size"],
            val_size=options["val_size"],
            test_size=options.get("test_size"),
            seed=cfg.seed,
        )
        base = FineTuneConfig(**({"method": method} | options.get("finetune", {})))
        trained = fine_tune_sweep(backbone, splits, base, lrs, cfg, out, resume)
        sweep = [{"lr": r["config"]["lr"], "val_acc": r["val_acc"]} for _, r in trained]
        best_model, best_record = max(trained, key=lambda t: t[1]["val_acc"])  # first of ties
        probs, labels = evaluate(best_model, splits.test, backbone, cfg, "test")  # test once
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
        shared = shares_backbone_pass(base, lrs)
        note = (
            f"{len(lrs)} learning rates trained at once from one backbone pass"
            if shared
            else f"{len(lrs)} learning rate(s), one run each"
        )
    seconds = time.perf_counter() - start
    from inca.bench import peak_rss_mib

    for row in rows:
        task_dir = Path(row["task"])
        row |= {
            "train_time_s": seconds,
            "peak_rss_mib": peak_rss_mib(),
            "sweep": sweep,
            "task_bytes": sum(f.stat().st_size for f in task_dir.glob("*") if f.is_file()),
            "note": note,
            "epochs": cfg.epochs,
            "runs": 1 if METHODS[method][0] == "plan" or shared else len(lrs),
        }
    return {"method": method, "rows": rows}


def compare(
    methods: list[str], options: dict[str, Any], out: str | Path, in_process: bool = False
) -> dict[str, Any]:
    """Run each method (skipping finished ones), then write compare.json and the report."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "options.json"
    if saved.exists():  # results made with other options must not be mixed into this table
        before = json.loads(saved.read_text())
        now = json.loads(json.dumps(options))
        diff = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
        if diff:
            raise IncaError(
                f"{out} holds a comparison made with other options "
                f"({', '.join(diff)} differ); use the same options or another --out"
            )
    write_json(saved, options)
    for method in methods:
        result_file = out / method / "result.json"
        if result_file.exists():
            print(f"{method}: done before, not rerun ({result_file})")
            continue
        print(f"== {method} ==")
        if in_process:
            write_json(result_file, run_method(method, options, out / method))
        else:  # its own process: its own peak memory
            code = (
                "import json, sys; from pathlib import Path; from inca.compare import "
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
    summary = {
        "options": options,
        "budget": f"{options['train']['epochs']} epochs each",
        "rows": rows,
    }
    write_json(out / "compare.json", summary)
    from inca.compare_report import write_compare_report

    write_compare_report(summary, out)
    return summary


def default_options(
    model: str,
    data: str,
    image_size: int,
    train_size: int,
    val_size: float,
    test_size: int | None,
    config,
) -> dict[str, Any]:
    return {
        "model": model,
        "data": data,
        "image_size": image_size,
        "train_size": train_size,
        "val_size": val_size,
        "test_size": test_size,
        "train": asdict(config),
    }
