"""`inca bench-views`: what exact views and a centre crop buy where orientation carries no meaning.

The data set is made here, as a folder of PNG files a user could have: a Fashion-MNIST item
(all ten classes), turned by a random multiple of 90 degrees and mirrored at random, pasted
small (28 px) near the middle of a dark, noisy 112 px field with a few faint point sources, as
in astronomy or microscopy. Up is meaningless there, and the object fills a small part of the
frame. The folder is read with ``imagefolder:`` and the defaults chosen from the data (every
image, 20% test, 15% of the rest for validation, ``--image-size auto``). The main job then runs:

    plain                      the defaults
    views                      --views dihedral (each training image cached in its 8 views)
    views + test views         --views dihedral --test-views (val and test averaged over them)
    + crop                     and --crop center:0.5 (the item twice as large in the input)

Reported per run: the best adapter's and the ensemble's test accuracy (with the test views
where used, and without them from the same adapters), the linear probe, the epochs, the time
to build the cache and to train, the cache on disk, and the backbone images each prediction
costs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from inca.bench.detail import made_once, run_row
from inca.utils.io import write_json

NAMES = ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
         "Ankle-boot"]  # fmt: skip
PER_CLASS = 400  # 4,000 images
CANVAS, ITEM, JITTER = 112, 28, 12  # the item's centre within JITTER px of the frame's

RUNS: dict[str, dict[str, Any]] = {
    "plain": {},
    "views": {"views": "dihedral"},
    "views + test views": {"views": "dihedral", "test_views": True},
    "views + test views + crop 0.5": {"views": "dihedral", "test_views": True, "crop": 0.5},
}


def _field(rng: np.random.Generator) -> np.ndarray:
    """(CANVAS, CANVAS) float: dark noise and a few faint point sources."""
    base = rng.normal(18, 6, (CANVAS, CANVAS))
    yy, xx = np.mgrid[:CANVAS, :CANVAS]
    for _ in range(rng.integers(3, 9)):
        cy, cx, r = rng.uniform(0, CANVAS), rng.uniform(0, CANVAS), rng.uniform(0.6, 1.8)
        base += rng.uniform(30, 90) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    return base


def make_orientation_free_folder(
    root: str | Path, per_class: int = PER_CLASS, seed: int = 0
) -> Path:
    """Write the data set under ``root/<class>/<n>.png`` (skipped when it is there already);
    returns ``root``."""
    return made_once(root, seed, lambda *a: _write(*a, per_class))


def _write(
    root: Path, images: np.ndarray, labels: np.ndarray, rng: np.random.Generator, per_class: int
) -> None:
    lo = CANVAS // 2 - ITEM // 2 - JITTER
    for label, name in enumerate(NAMES):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for n, i in enumerate(rng.permutation(np.flatnonzero(labels == label))[:per_class]):
            item = np.rot90(images[i], int(rng.integers(4)))
            item = item[:, ::-1] if rng.integers(2) else item
            alpha = item.astype(np.float32) / 255  # (28, 28) the item's mask
            canvas = _field(rng)
            y, x = rng.integers(lo, lo + 2 * JITTER + 1, size=2)
            patch = canvas[y : y + ITEM, x : x + ITEM]
            canvas[y : y + ITEM, x : x + ITEM] = patch * (1 - alpha) + rng.uniform(150, 240) * alpha
            Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), mode="L").save(
                folder / f"{n:05d}.png"
            )


def run_views(
    folder: str | Path = "runs/views/data",
    runs_dir: str | Path = "runs/views",
    out: str | Path = "benchmarks/results/views.json",
    only: list[str] | None = None,
) -> dict[str, Any]:
    """The main job on the orientation-free folder, once per entry of ``RUNS`` (or ``only``);
    JSON and Markdown out. Each run is resumable; a finished one is read back."""
    from inca.recipes.data_fit import auto_image_size
    from inca.recipes.plan_run import run_plan
    from inca.recipes.run_options import RunOptions
    from inca.train import FROZEN_DEFAULTS, TrainConfig

    data = f"imagefolder:{make_orientation_free_folder(folder)}"
    image_size = auto_image_size("dinov2-small", data)
    rows = []
    for label, extra in RUNS.items():
        if only and label not in only:
            continue
        started = time.perf_counter()
        run = Path(runs_dir) / label.replace(" + ", "+").replace(" ", "-")
        train = TrainConfig(**FROZEN_DEFAULTS, workers=None,
                            **{k: v for k, v in extra.items() if k != "crop"})  # fmt: skip
        options = RunOptions(data=data, image_size=image_size, train=train,
                             crop=extra.get("crop", 1.0), cache=str(run / "cache"))  # fmt: skip
        results = run_plan(options, run, resume=(run / "plan.json").exists())
        row = run_row(label, image_size, results, time.perf_counter() - started)
        rows.append(row | _views_columns(results, extra))
    report = {"data": data, "per_class": PER_CLASS, "image_size": image_size, "rows": rows}
    write_json(out, report)
    Path(out).with_suffix(".md").write_text(views_table(report) + "\n")
    print(views_table(report))
    return report


def _views_columns(results: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    sel = results["selection"]
    one = {k: (sel[k].get("one_view") or {}).get("test_acc") for k in ("best", "ensemble")}
    views = 8 if extra.get("test_views") else 1
    return {"best_one_view_test_acc": one["best"], "ensemble_one_view_test_acc": one["ensemble"],
            "backbone_images_per_prediction": views, "options": extra}  # fmt: skip


def views_table(report: dict[str, Any]) -> str:
    from inca.report.format import markdown_table

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.2f}%"

    def seconds(x: float | None) -> str:
        return "-" if x is None else f"{x:.0f} s"

    head = ["run", "best adapter: test", "(without test views)", "ensemble: test",
            "(without test views)", "linear probe", "epochs run", "cache build", "training",
            "cache on disk", "backbone images per prediction"]  # fmt: skip
    body = [
        [r["asked"], pct(r["best_test_acc"]), pct(r["best_one_view_test_acc"]),
         pct(r["ensemble_test_acc"]), pct(r["ensemble_one_view_test_acc"]),
         pct(r["linear_probe_test_acc"]), f"{r['epochs_run']} ({r['max_epochs']})",
         seconds(r["cache_build_s"]), seconds(r["train_s"]), f"{r['cache_gb']:.2f} GB",
         str(r["backbone_images_per_prediction"])]
        for r in report["rows"]
    ]  # fmt: skip
    return markdown_table(head, body)
