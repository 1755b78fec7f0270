"""Backbone throughput (images/s) by image size and precision, plus bf16's numerical drift.

Measured in one run on this machine, so the ratios between rows are what matter. Forward only
(synthetic pixels, no data loading), taps = every block, batch 32 by default.

    python -m inca.bench.backbone_throughput [--model dinov2-small] [--sizes 112 224]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

import inca
from inca.recipes.data_options import DEFAULT_MODEL
from inca.utils.io import write_json


def images_per_second(backbone: inca.Backbone, size: int, batch: int, seconds: float) -> float:
    x = torch.randn(batch, 3, size, size)
    backbone.forward_taps(x)  # warm-up (kernel selection, allocator)
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or n < 2:
        backbone.forward_taps(x)
        n += 1
    return n * batch / elapsed


def drift(reference: inca.Backbone, other: inca.Backbone, size: int) -> dict[str, float]:
    """How far `other`'s final tokens are from the fp32 ones: max abs and mean cosine."""
    x = torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(0))
    a = reference.forward_taps(x, ["final"])["final"].float()
    b = other.forward_taps(x, ["final"])["final"].float()
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1).mean().item()
    return {"max_abs": (a - b).abs().max().item(), "mean_cosine": cos}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--sizes", type=int, nargs="+", default=[112, 224])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "amp-bf16", "bf16"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=8.0, help="time per measurement")
    ap.add_argument("--out", default="benchmarks/results/backbone_throughput.json")
    args = ap.parse_args()

    rows = []
    for size in args.sizes:
        backbones = {
            p: inca.load_backbone(args.model, image_size=size, precision=p) for p in args.precisions
        }
        for p, bb in backbones.items():
            row = {
                "model": args.model,
                "image_size": size,
                "precision": p,
                "batch": args.batch,
                "device": str(bb.device),
                "images_per_s": images_per_second(bb, size, args.batch, args.seconds),
            }
            if p != "fp32" and "fp32" in backbones:
                row |= {f"drift_{k}": v for k, v in drift(backbones["fp32"], bb, size).items()}
            rows.append(row)
            print(
                f"{args.model} {size:>4}px {p:>9}: {row['images_per_s']:7.1f} img/s"
                + (
                    f"   final tokens vs fp32: max|d| {row['drift_max_abs']:.3f}, "
                    f"cos {row['drift_mean_cosine']:.5f}"
                    if "drift_max_abs" in row
                    else ""
                )
            )
    meta = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": platform.processor(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, {"meta": meta, "rows": rows})
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
