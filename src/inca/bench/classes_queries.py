"""The trained Open-InCA head (a query and an output unit per class) on the class-incremental
protocol, through the product's own path: ``inca classes new --head queries`` on the first
step's classes, then ``inca classes add`` for each later step, on that step's images only (no
replay: pseudo old-class samples from the stored class means). Kept as a row of
``inca bench-classes``, the design the analytic head replaced."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any


def queries_run(data: str, groups: list[list[str]], common: dict[str, Any], root: Path,
                key: str) -> list[dict[str, Any]]:  # fmt: skip
    """Accuracy over the classes seen, after each step of ``groups`` (class names), trained
    under ``root``/``key``; ``common``: model, tap, config, image size, sizes."""
    from inca.recipes.add_classes import add_classes, new_classes_task

    task = root / key
    first = new_classes_task(data, groups[0], out=task, cache=root / f"{key}-c1", **common)
    rows = [{"test_acc": first["test_acc"], "by_class": first["test_acc_by_class"]}]
    print(f"{key}, step 1: {100 * first['test_acc']:.2f}%", flush=True)
    for k, group in enumerate(groups[1:], start=2):
        rec = add_classes(task, data, group, config=common["config"], sizes=common["sizes"],
                          cache=root / f"{key}-c{k}")  # fmt: skip
        rows.append({"test_acc": rec["test_acc"], "by_class": rec["test_acc_by_class"]})
        print(f"{key}, step {k}: {100 * rec['test_acc']:.2f}%", flush=True)
    shutil.rmtree(task, ignore_errors=True)
    return rows
