"""What a saved task costs to predict: images per second through every backbone it reads.

A task runs each of its backbones up to the deepest tap its members read, then its adapters;
a combined task runs each part's backbone. Measured in one run on this machine (synthetic
pixels, no decoding), so the ratios between tasks are what matter.

    python -m inca.bench.task_cost runs/a/tasks/ensemble runs/both [--batch 64] [--seconds 20]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path
from typing import Any

import torch

from inca.backbones.cost import gflops_per_image
from inca.tasks import load_task
from inca.tasks.by_backbone import MultiBackbone
from inca.utils.io import write_json


def task_cost(path: str, batch: int, seconds: float) -> dict[str, Any]:
    """Images per second of the task saved at ``path`` (at least two timed batches)."""
    task = load_task(path)
    multi = MultiBackbone([task])
    gen = torch.Generator().manual_seed(0)
    pixels = [torch.randn(batch, 3, b.preprocess.image_size, b.preprocess.image_size,
                          generator=gen) for b in multi.backbones]  # fmt: skip
    multi.predict_proba(pixels)  # warm-up
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or n < 2:
        multi.predict_proba(pixels)
        n += 1
    per_s = n * batch / elapsed
    return {
        "task": str(path),
        "name": task.name,
        "backbones": [b.name for b in multi.backbones],
        "taps": {g.backbone.name: g.taps for g in multi.groups},
        "gflop_per_image_whole_backbones": sum(gflops_per_image(b) for b in multi.backbones),
        "images_per_s": per_s,
        "ms_per_image": 1000 / per_s,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("tasks", nargs="+", help="task directories")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/task_cost.json"))
    args = p.parse_args(argv)
    rows = [task_cost(t, args.batch, args.seconds) for t in args.tasks]
    for r in rows:
        print(f"{r['name']:<50} {' + '.join(r['backbones']):<32} {r['images_per_s']:7.1f} img/s"
              f"  {r['ms_per_image']:6.2f} ms/img")  # fmt: skip
    write_json(args.out, {"machine": platform.processor() or platform.machine(),
                          "threads": torch.get_num_threads(), "batch": args.batch,
                          "rows": rows})  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
