"""`inca bench --world-size N`: the same jobs on 1 and on N processes under ``torchrun``.

What a user would run, run as they would run it: ``torchrun --nproc-per-node W -m inca train``
builds the activation cache (sharded over the ranks) and trains the plan from it, data-parallel;
a second run trains it online (the backbone in the loop). Measured at W = 1 and W = N, in one
session on one machine:

- cache build: images per second over the three splits (``build.json``);
- one-to-many epoch from the cache, and online: the median seconds of an epoch, training and
  validation (``log.jsonl``), for the same global batch; from the cache also with
  ``--shard adapters`` (each rank trains half the grid over the whole cache, no gradient
  traffic), the mode meant for cached grids on many processes;
- the all-reduce each step pays: the stacked adapters' gradients (fp32 bytes), against the
  backbone's time per step, which gives the scaling to expect where the ranks have devices of
  their own.

On a CPU the N processes share the cores one process used (torchrun gives each one thread), so
the ratio N / 1 measures the overhead of the distributed path, not a speed-up.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from inca.recipes.data_options import DEFAULT_DATA, DEFAULT_MODEL, MEASURED_IMAGE_SIZE
from inca.report.format import markdown_table
from inca.utils.io import write_json

PLAN = "inca taps=block.*; linear taps=block.*[-3:]"  # the one-to-many benchmark's plan
OVERHEAD_TARGET = 1.15  # N processes may be at most this much slower than one, on one CPU
LINK_GB_PER_S = {"NVLink (H100/H200 node)": 150.0, "PCIe 4 x16": 20.0, "25 GbE": 2.5}


def launch(world_size: int, args: list[str]) -> tuple[float, str]:
    """Run ``inca ARGS`` on ``world_size`` processes; wall seconds and stdout."""
    cmd = [sys.executable, "-m", "inca", *args]
    if world_size > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={world_size}", "-m", "inca", *args]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start, done.stdout


def epoch_seconds(run_dir: Path) -> float:
    """The median seconds of the run's epochs, training and validation (rank 0 validates
    after every rank's slice is done, so this is the epoch's wall time); the first epoch is
    dropped when there are more, it warms up."""
    lines = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    seconds = [e["train_seconds"] + e["val_seconds"] for e in lines]
    return statistics.median(seconds[1:] if len(seconds) > 2 else seconds)


def measure(world_size: int, common: list[str], images: int, tmp: Path, epochs: int) -> dict:
    """Cache build, cached epochs and an online epoch on ``world_size`` processes."""
    cached = tmp / f"cached-{world_size}"
    launch(world_size, ["train", *common, "--epochs", str(epochs), "--out", str(cached),
                        "--cache", str(cached / "cache")])  # fmt: skip
    build = json.loads((cached / "cache" / "build.json").read_text())["seconds"]
    sharded = None
    if world_size > 1:  # the same grid, split by adapters instead of by batch
        grid = tmp / f"grid-{world_size}"
        launch(world_size, ["train", *common, "--epochs", str(epochs), "--out", str(grid),
                            "--cache", str(cached / "cache"), "--shard", "adapters"])  # fmt: skip
        sharded = epoch_seconds(grid)
    online = tmp / f"online-{world_size}"
    launch(world_size, ["train", *common, "--epochs", "2", "--no-cache", "--no-augment",
                        "--out", str(online)])  # fmt: skip
    results = json.loads((cached / "results.json").read_text())
    sgd_params = sum(a["params"] for a in results["adapters"]
                     if a["config"].get("solver") != "lbfgs")  # fmt: skip
    return {
        "processes": world_size,
        "cache_build_s": build,
        "cache_images_per_s": images / build,
        "cached_epoch_s": epoch_seconds(cached),
        "cached_epoch_shard_adapters_s": sharded,
        "online_epoch_s": epoch_seconds(online),
        "test_acc_best": results["selection"]["best"]["test_acc"],
        "allreduce_mib_per_step": 4 * sgd_params / 2**20,  # fp32 gradients of the stack
    }


def run_scaling_benchmark(
    world_size: int,
    model: str = DEFAULT_MODEL,
    data: str = DEFAULT_DATA,
    n: int = 1024,
    image_size: int = MEASURED_IMAGE_SIZE,
    batch_size: int = 64,
    epochs: int = 4,
    out: str | Path = "benchmarks/results",
) -> dict[str, Any]:
    """Measure 1 and ``world_size`` processes; print the table, write ``scaling.json``."""
    val, test = 256, 256
    common = ["--model", model, "--data", data, "--image-size", str(image_size),
              "--train-size", str(n), "--val-size", str(val), "--test-size", str(test),
              "--batch-size", str(batch_size), "--plan", PLAN, "--halving-epochs", "0",
              "--min-steps", "0", "--no-progress"]  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as name:
        for w in (1, world_size):
            print(f"{w} process(es) ...", flush=True)
            rows.append(measure(w, common, n + val + test, Path(name), epochs))
    one, many = rows
    ratios = {k: many[k] / one[k] for k in ("cache_build_s", "cached_epoch_s", "online_epoch_s")}
    ratios["cached_epoch_shard_adapters_s"] = (
        many["cached_epoch_shard_adapters_s"] / one["cached_epoch_s"]
    )
    steps = n // batch_size
    step_s = one["online_epoch_s"] / steps  # backbone + adapters, per global batch, 1 process
    mib = one["allreduce_mib_per_step"]
    expected = {
        link: {
            # ring all-reduce: each rank sends and receives 2 (N-1)/N of the buffer
            "allreduce_ms": 1e3 * 2 * (world_size - 1) / world_size * mib * 2**20 / (gbs * 1e9),
        }
        for link, gbs in LINK_GB_PER_S.items()
    }
    for e in expected.values():
        # N devices each run 1/N of the backbone; the all-reduce is paid on top
        e["expected_speedup"] = step_s / (step_s / world_size + e["allreduce_ms"] / 1e3)
    res = {
        "setup": {
            "model": model,
            "data": data,
            "train_images": n,
            "image_size": image_size,
            "batch_size": batch_size,
            "plan": PLAN,
            "world_size": world_size,
            "cpus": os.cpu_count(),
        },  # fmt: skip
        "rows": rows,
        "ratio_n_over_1": ratios,
        "target": f"N processes at most {OVERHEAD_TARGET}x one process's time, on one CPU",
        "met": {k: r <= OVERHEAD_TARGET for k, r in ratios.items()},
        "backbone_step_s_one_process": step_s,
        "expected_on_devices": expected,
    }
    write_json(Path(out) / "scaling.json", res)
    print(scaling_table(res))
    return res


def scaling_table(res: dict[str, Any]) -> str:
    one, many = res["rows"]
    r = res["ratio_n_over_1"]
    header = ["", "1 process", f"{many['processes']} processes", "ratio"]
    rows = [
        ["cache build (img/s)", f"{one['cache_images_per_s']:.1f}",
         f"{many['cache_images_per_s']:.1f}", f"{r['cache_build_s']:.3f} (time)"],
        ["one-to-many epoch from the cache, data-parallel (s)", f"{one['cached_epoch_s']:.2f}",
         f"{many['cached_epoch_s']:.2f}", f"{r['cached_epoch_s']:.3f}"],
        ["one-to-many epoch from the cache, --shard adapters (s)", f"{one['cached_epoch_s']:.2f}",
         f"{many['cached_epoch_shard_adapters_s']:.2f}",
         f"{r['cached_epoch_shard_adapters_s']:.3f}"],
        ["one-to-many epoch online (s)", f"{one['online_epoch_s']:.1f}",
         f"{many['online_epoch_s']:.1f}", f"{r['online_epoch_s']:.3f}"],
        ["best adapter, test accuracy", f"{100 * one['test_acc_best']:.2f}%",
         f"{100 * many['test_acc_best']:.2f}%", ""],
    ]  # fmt: skip
    links = [
        [link, f"{e['allreduce_ms']:.2f}", f"{e['expected_speedup']:.2f}x"]
        for link, e in res["expected_on_devices"].items()
    ]
    lines = [
        markdown_table(header, rows),
        "",
        f"All-reduce per step: {one['allreduce_mib_per_step']:.1f} MiB; backbone step "
        f"(1 process): {res['backbone_step_s_one_process']:.2f} s. Target: {res['target']}: "
        + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in res["met"].items())
        + ".",
        "",
        markdown_table(
            ["link", "all-reduce (ms/step)", f"expected speed-up on {many['processes']} devices"],
            links,
        ),
    ]
    return "\n".join(lines)
