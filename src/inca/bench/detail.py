"""`inca bench-detail`: does the image size fit the data? A data set where small details decide
the class, run through the main job with no size flags, at auto (224 px) and at 112 px.

The data set is made here, as a folder of PNG files a user could have: a 28 px Fashion-MNIST
item (one of five classes whose pairs differ in details) pasted at a random place on a 224 px
grey textured canvas with distractor blobs, classes imbalanced (about 44/22/15/11/7%). At
112 px the item is 14 px wide, one patch of DINOv2-S; at 224 px it keeps its 28 px. The folder
is read with ``imagefolder:`` and the defaults chosen from the data (every image, 20% test, 15%
of the rest for validation, ``--image-size auto``); the benchmark then forces 112 px to show
what auto buys. Reported per size: the best adapter's and the ensemble's test accuracy and
balanced accuracy, the epochs run against the selected member's best epoch (patience should
stop a flat run), and the time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from inca.utils.io import write_json

# Fashion-MNIST ids; pairs that differ in details: sleeves (T-shirt, Pullover), straps and
# holes (Sandal, Sneaker), the shaft (Sneaker, Ankle-boot)
CLASSES = {"T-shirt": 0, "Pullover": 2, "Sandal": 5, "Sneaker": 7, "Ankle-boot": 9}
COUNTS = (1200, 600, 400, 300, 200)  # 2,700 images, imbalanced
CANVAS, ITEM = 224, 28


def _canvas(rng: np.random.Generator) -> np.ndarray:
    """(CANVAS, CANVAS) float texture: smooth noise, fine grain and a few soft blobs."""
    coarse = Image.fromarray(rng.uniform(40, 170, (8, 8)).astype(np.uint8))
    base = np.asarray(coarse.resize((CANVAS, CANVAS), Image.BICUBIC), dtype=np.float32)
    base = base + rng.normal(0, 12, (CANVAS, CANVAS))
    yy, xx = np.mgrid[:CANVAS, :CANVAS]
    for _ in range(rng.integers(2, 6)):  # blobs of the item's size: size alone is no cue
        cy, cx, r = rng.uniform(0, CANVAS), rng.uniform(0, CANVAS), rng.uniform(5, 14)
        base += rng.uniform(40, 90) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    return base


def make_small_detail_folder(
    root: str | Path, counts: tuple[int, ...] = COUNTS, seed: int = 0
) -> Path:
    """Write the data set under ``root/<class>/<n>.png`` (skipped when it is there already);
    returns ``root``."""
    return made_once(root, seed, lambda *a: _write_small_detail(*a, counts))


def made_once(root: str | Path, seed: int, write: Callable[..., None]) -> Path:
    """``write(root, images, labels, rng)`` a data set made from Fashion-MNIST's training
    images once: a folder marked complete is kept as it is. Returns ``root``."""
    from inca.data._fashion_mnist import read_fashion_mnist

    root = Path(root)
    done = root / ".complete"
    if not done.exists():
        images, labels = read_fashion_mnist("train")  # (60000, 28, 28) uint8, (60000,)
        write(root, images, labels, np.random.default_rng(seed))
        done.touch()
    return root


def _write_small_detail(
    root: Path, images: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
    counts: tuple[int, ...],
) -> None:  # fmt: skip
    for (name, label), count in zip(CLASSES.items(), counts, strict=True):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        pool = rng.permutation(np.flatnonzero(labels == label))[:count]
        for n, i in enumerate(pool):
            canvas = _canvas(rng)
            alpha = images[i].astype(np.float32) / 255  # (28, 28) the item's mask
            y, x = rng.integers(0, CANVAS - ITEM, size=2)
            patch = canvas[y : y + ITEM, x : x + ITEM]
            ink = rng.uniform(200, 245)
            canvas[y : y + ITEM, x : x + ITEM] = patch * (1 - alpha) + ink * alpha
            pixels = np.clip(canvas, 0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(folder / f"{n:05d}.png")


def run_small_detail(
    folder: str | Path = "runs/small-detail/data",
    runs_dir: str | Path = "runs/small-detail",
    sizes: tuple[int | str, ...] = ("auto", 112),
    out: str | Path = "benchmarks/results/small_detail.json",
) -> dict[str, Any]:
    """The main job on the small-detail folder at each of ``sizes``; JSON and Markdown out."""
    from inca.recipes.data_fit import auto_image_size
    from inca.recipes.plan_run import run_plan
    from inca.recipes.run_options import RunOptions
    from inca.train import FROZEN_DEFAULTS, TrainConfig

    data = f"imagefolder:{make_small_detail_folder(folder)}"
    rows = []
    for size in sizes:
        started = time.perf_counter()
        image_size = auto_image_size("dinov2-small", data) if size == "auto" else int(size)
        run = Path(runs_dir) / f"{image_size}px"
        options = RunOptions(data=data, image_size=image_size,
                             train=TrainConfig(**FROZEN_DEFAULTS, workers=None),
                             cache=str(run / "cache"))  # fmt: skip
        results = run_plan(options, run, resume=(run / "plan.json").exists())
        rows.append(run_row(size, image_size, results, time.perf_counter() - started))
    report = {"data": data, "counts": dict(zip(CLASSES, COUNTS, strict=True)), "rows": rows}
    write_json(out, report)
    Path(out).with_suffix(".md").write_text(detail_table(report) + "\n")
    print(detail_table(report))
    return report


def run_row(asked: int | str, size: int, results: dict[str, Any], seconds: float) -> dict:
    best, ens = results["selection"]["best"], results["selection"]["ensemble"]
    members = {a["name"]: a for a in results["adapters"]}
    training = results["run"]
    return {
        "image_size": size,
        "asked": asked,
        "best": best["name"],
        "best_test_acc": best["test_acc"],
        "best_test_balanced_acc": best.get("test_balanced_acc"),
        "ensemble_test_acc": ens["test_acc"],
        "ensemble_test_balanced_acc": ens.get("test_balanced_acc"),
        "epochs_run": training.get("epochs"),
        "max_epochs": training.get("max_epochs"),
        "best_epoch": members.get(best["name"], {}).get("best_epoch"),
        "stopped": training.get("stopped"),
        "linear_probe": results.get("reference", {}).get("name"),
        "linear_probe_test_acc": results.get("reference", {}).get("test_acc"),
        "linear_probe_test_balanced_acc": results.get("reference", {}).get("test_balanced_acc"),
        "cache_build_s": training.get("cache", {}).get("build_seconds"),
        "train_s": training.get("train_time_s", 0) + training.get("val_time_s", 0),
        "seconds": seconds,
        "sizes": training.get("sizes"),
        "cache_gb": training.get("cache", {}).get("bytes", 0) / 1e9,
    }


def detail_table(report: dict[str, Any]) -> str:
    from inca.report.format import markdown_table

    head = ["image size", "best adapter: test acc / balanced", "ensemble: test acc / balanced",
            "linear probe (reference)", "epochs run (cap)", "best epoch", "cache build",
            "training"]  # fmt: skip
    body = []
    for r in report["rows"]:

        def pair(a: float, b: float | None) -> str:
            return f"{100 * a:.2f}% / " + (f"{100 * b:.2f}%" if b is not None else "-")

        body.append([
            f"{r['image_size']} px" + (" (auto)" if r["asked"] == "auto" else ""),
            pair(r["best_test_acc"], r["best_test_balanced_acc"]),
            pair(r["ensemble_test_acc"], r["ensemble_test_balanced_acc"]),
            pair(r["linear_probe_test_acc"], r["linear_probe_test_balanced_acc"]),
            f"{r['epochs_run']} ({r['max_epochs']})",
            str(r["best_epoch"]),
            f"{r['cache_build_s']:.0f} s",
            f"{r['train_s']:.0f} s",
        ])  # fmt: skip
    return markdown_table(head, body)
