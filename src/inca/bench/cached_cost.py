"""The unit cost of a grid trained from the activation cache, beside the FLOP and byte model
(``flop_model``): microseconds per image per adapter, GFLOP/s, and the shares of the matmul
peak and of the roofline that ``inca bench`` reports."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from inca.backbones import Backbone
from inca.data import Splits
from inca.train import TrainConfig, adapter_trainer, parse_plan
from inca.train.trainer import Trainer


def trainer_for(  # the benchmark's trainers: one plan on the backbone, no signature
    backbone: Backbone,
    splits: Splits,
    plan: str,
    cfg: TrainConfig,
    out: Path,
    caches: dict | None = None,
) -> Trainer:
    specs = parse_plan(plan, backbone.taps)
    return adapter_trainer(backbone, splits, specs, cfg, out, {}, caches)


def training_epoch(trainer: Trainer) -> float:
    start = time.perf_counter()
    trainer.train_epoch()
    return time.perf_counter() - start


def best_of(repeats: int, measure) -> float:
    """The fastest of ``repeats`` timings: this machine is shared, noise only ever adds time."""
    return min(measure() for _ in range(repeats))


def cached_cost(
    backbone: Backbone, splits: Splits, caches: dict, tmp: Path, plan: str
) -> list[dict[str, Any]]:
    """Microseconds per training image per adapter of an epoch from the activation cache: the
    unit cost of a grid. For ``plan`` (the benchmark's) at batch 64 (the old default), the main
    job's InCA grid at batch 64, at its default batch of 128, at 512 (the weights' traffic
    spread over 4x the images: what the per-image work alone costs) and at 128 through
    torch.compile (``--compile``; its compile time reported apart)."""
    from inca.methods.inca import INCA_GRID as grid
    from inca.train import FROZEN_DEFAULTS

    default = FROZEN_DEFAULTS["batch_size"]
    rows = []
    for what, member_plan, batch, compiled in (
        (f"{plan} (15 adapters), batch 64", plan, 64, False),
        ("main job's InCA grid (48 adapters), batch 64", grid, 64, False),
        (f"main job's InCA grid (48 adapters), batch {default}", grid, default, False),
        ("main job's InCA grid (48 adapters), batch 512", grid, 512, False),
        (f"main job's InCA grid (48 adapters), batch {default}, --compile", grid, default, True),
    ):
        cfg = TrainConfig(batch_size=batch, progress=False, augment=False, compile=compiled)
        tr = trainer_for(backbone, splits, member_plan, cfg, tmp / f"cost{len(rows)}", caches)
        warm = training_epoch(tr)  # warm-up (and compiling)
        seconds = best_of(2, lambda tr=tr: training_epoch(tr))
        images = tr.steps_per_epoch * batch
        specs = list(tr.members.specs.values())
        flops = plan_flops(backbone, specs, len(splits.class_names))
        per_step, per_image = plan_bytes(backbone, specs, len(splits.class_names))
        rows.append(
            {
                "what": what,
                "adapters": len(tr.members.names),
                "batch_size": batch,
                "epoch_s": seconds,
                "first_epoch_s": warm,  # with --compile: the compiling
                "us_per_image_per_adapter": 1e6 * seconds / (images * len(tr.members.names)),
                "model_mflop_per_image": flops / 1e6,
                "achieved_gflops": flops * images / seconds / 1e9,
                "model_mb_per_step": per_step / 1e6,
                "model_mb_per_image": per_image / 1e6,
                "steps": tr.steps_per_epoch,
                "images": images,
            }
        )
    return rows


def plan_flops(backbone: Backbone, specs: Any, classes: int) -> float:
    """The FLOP model's cost per image of one training step of every member (``flop_model``)."""
    from inca.bench.flop_model import step_flops

    taps = backbone.taps
    return sum(step_flops(s, taps[s.tap].tokens, taps[s.tap].dim, classes)
               for s in specs if s.tap in taps)  # fmt: skip


def plan_bytes(backbone: Backbone, specs: Any, classes: int) -> tuple[float, float]:
    """The byte model's traffic of one training step of every InCA member: (per step, per
    image); bf16 tokens (the cache's dtype here)."""
    from inca.bench.flop_model import inca_step_bytes

    per_step = per_image = 0.0
    for s in specs:
        if s.kind != "inca" or s.tap not in backbone.taps:
            continue
        info = backbone.taps[s.tap]
        _, heads = s.config.resolved(info.dim)
        b = inca_step_bytes(info.tokens, info.dim, s.config.queries, heads, classes)
        per_step, per_image = per_step + b["per_step"], per_image + b["per_image"]
    return per_step, per_image


def add_roofline(rows: list[dict[str, Any]], gflops: float, gbytes_per_s: float) -> None:
    """Each cached-cost row's share of the matmul peak (FLOPs alone) and of the roofline
    (FLOPs at the peak plus the modelled bytes at the copy bandwidth)."""
    from inca.bench.flop_model import step_seconds

    for row in rows:
        bytes_moved = row["model_mb_per_step"] * 1e6 * row["steps"]
        bytes_moved += row["model_mb_per_image"] * 1e6 * row["images"]
        flops = row["model_mflop_per_image"] * 1e6 * row["images"]
        row["share_of_bf16_peak"] = row["achieved_gflops"] / gflops
        row["roofline_s"] = step_seconds(flops, bytes_moved, gflops, gbytes_per_s)
        row["share_of_roofline"] = row["roofline_s"] / row["epoch_s"]
