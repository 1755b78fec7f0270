"""`inca bench`: does one-to-many training cost what one backbone pass costs? Measured here.

All timings come from one run on one machine, so the ratios are what matter:

- R1 = one online training epoch of the plan / one epoch of plain tap extraction (same loader).
- R2 = one training epoch from the activation cache / one extraction epoch.
- R3 = the plan trained as separate single-adapter runs (each its own backbone pass) / the
  one-to-many run, on a small subset.
- R4 = peak resident memory of one-to-many online training / of extraction alone (each in a
  fresh process).
- the epoch time (online and cached) against the number of adapters: 1, 4, 16, 64;
- backbone throughput in fp32 and bf16; the adapter computation in plain and folded form.
"""

from __future__ import annotations

import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from inca.adapters import build_adapter
from inca.adapters.stack import AdapterStack
from inca.backbones import Backbone, load_backbone
from inca.bench.backbone_throughput import images_per_second
from inca.bench.cached_cost import add_roofline, best_of, cached_cost, trainer_for, training_epoch
from inca.bench.flop_model import copy_bandwidth
from inca.bench.report import TARGETS, format_table, plot_curve
from inca.cache import ActivationCache, build_cache
from inca.data import ImageTransform, Splits, make_loader, make_splits
from inca.methods.inca import InCAConfig
from inca.recipes.data_options import DEFAULT_DATA, DEFAULT_MODEL, MEASURED_IMAGE_SIZE
from inca.train import TrainConfig
from inca.utils.io import write_json
from inca.utils.process import peak_rss_mib, run_fresh

PLAN = "inca taps=block.*; linear taps=block.*[-3:]"  # 12 InCA + 3 linear probes
CURVE_PLANS = {
    1: "inca taps=block.6",
    4: "inca taps=block.*[::3]",
    16: "inca taps=block.*[-8:] lr=1e-3,3e-4",
    64: "inca taps=block.*[-8:] lr=1e-3,3e-4,1e-4,3e-5 wd=1e-4,1e-2",
}


def extraction_epoch(
    backbone: Backbone, splits: Splits, taps: list[str], cfg: TrainConfig
) -> float:
    """Seconds for one epoch of tap extraction through the training loader (no adapters)."""
    subset = splits.train
    transform = ImageTransform(
        backbone.preprocess, augment=cfg.augment, allow_hflip=subset.dataset.allow_hflip
    )
    loader = make_loader(
        subset,
        transform,
        cfg.batch_size,
        shuffle=True,
        seed=cfg.seed,
        num_workers=cfg.workers,
        drop_last=True,
    )
    start = time.perf_counter()
    for pixels, _, _ in loader:
        backbone.forward_taps(pixels, taps)
    return time.perf_counter() - start


def adapter_compute(
    paths=("plain", "folded"),
    n: int = 12,
    batch: int = 64,
    tokens: int = 65,
    dim: int = 384,
    repeats: int = 10,
) -> dict[str, float]:
    """Forward+backward time of a stack of ``n`` InCA adapters in each exact form, images/s."""
    x = torch.randn(n, batch, tokens, dim)
    out = {}
    for path in paths:
        torch.manual_seed(0)
        stack = AdapterStack([build_adapter(InCAConfig(path=path), dim, 10) for _ in range(n)])
        stack(x).sum().backward()  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            stack(x).sum().backward()
        out[path] = repeats * batch / (time.perf_counter() - start)
    return out


def backbone_throughput(model: str, size: int, batch: int = 32, seconds: float = 4.0) -> dict:
    """Images/s of ``model``'s forward to every tap at ``size`` px, fp32 and bf16."""
    out = {}
    for precision in ("fp32", "bf16"):
        bb = load_backbone(model, image_size=size, precision=precision)
        out[precision] = images_per_second(bb, size, batch, seconds)
    return out


def peak_memory(mode: str, args: dict[str, Any]) -> float:
    """Peak RSS (MiB) of a fresh process doing one epoch of ``mode`` (extract or train)."""
    return run_fresh("inca.bench.one_to_many:memory_child", mode, args)["peak_mib"]


def memory_child(mode: str, args: dict[str, Any]) -> dict[str, float]:
    backbone = load_backbone(args["model"], image_size=args["image_size"])
    splits = make_splits(args["data"], train_size=args["n"], val_size=args["val"], seed=0)
    cfg = TrainConfig(batch_size=args["batch_size"], workers=0, progress=False)
    taps = [t for t in backbone.taps if t.startswith("block.")]
    if mode == "extract":
        extraction_epoch(backbone, splits, taps, cfg)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            training_epoch(trainer_for(backbone, splits, PLAN, cfg, Path(tmp)))
    return {"peak_mib": peak_rss_mib()}


def run_benchmark(
    model: str = DEFAULT_MODEL,
    data: str = DEFAULT_DATA,
    n: int = 1024,
    small: int = 128,
    curve_n: int = 512,
    image_size: int = MEASURED_IMAGE_SIZE,
    batch_size: int = 64,
    out: str | Path = "benchmarks/results",
) -> dict[str, Any]:
    """Every measurement of the module docstring, in order, and the JSON, plot and table.

    Each measurement is a function of its own (R1, R2 and the unit cost, R3, the curve, R4,
    throughput): one body of 150 lines mixed five set-ups, and its timings were named only by
    the order they ran in. Here they only run and come together."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    backbone = load_backbone(model, image_size=image_size)
    cfg = TrainConfig(batch_size=batch_size, progress=False)
    splits = make_splits(data, train_size=n, val_size=200, test_size=200, seed=0)
    taps = [t for t in backbone.taps if t.startswith("block.")]
    res: dict[str, Any] = {
        "setup": {
            "model": model,
            "data": data,
            "train_images": n,
            "image_size": image_size,
            "batch_size": batch_size,
            "precision": backbone.precision.name,
            "device": str(backbone.device),
            "plan": PLAN,
            "curve_images": curve_n,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
        }
    }
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        seconds = time_online(backbone, splits, taps, cfg, tmp)
        cached, cost = time_cached(backbone, splits, taps, batch_size, tmp)
        seconds |= cached | time_separate_runs(backbone, data, small, cfg, tmp)
        curve, e_curve = time_curve(backbone, data, curve_n, taps, cfg, tmp)
    memory = measure_memory(model, image_size, data, batch_size)

    e = seconds["extraction_epoch"]
    res["ratios"] = {
        "R1": seconds["online_epoch"] / e,
        "R2": seconds["cached_epoch"] / e,
        "R3": seconds["separate_runs"] / seconds["one_to_many_small"],
        "R4": memory["one_to_many_training"] / memory["extraction"],
    }
    res["seconds"] = seconds
    res["memory_mib"] = memory
    res["cached_cost"] = cost
    res["curve"] = curve
    res["curve_extraction_s"] = e_curve  # the extraction epoch of the curve's subset
    res |= measure_throughput(model)
    res["gemm_peak_gflops"] = gemm_peak(backbone, batch_size)
    res["copy_gbytes_per_s"] = copy_bandwidth()
    peak = res["gemm_peak_gflops"]["bf16"]["square_2048"]
    add_roofline(cost, peak, res["copy_gbytes_per_s"])
    res["met"] = {
        k: (res["ratios"][k] <= v if op == "<=" else res["ratios"][k] >= v)
        for k, (op, v) in TARGETS.items()
    }
    write_json(out / "one_to_many.json", res)
    plot_curve(curve, e_curve, out / "epoch_time_vs_adapters.png", res["setup"])
    print(format_table(res))
    return res


def time_online(
    backbone: Backbone, splits: Splits, taps: list[str], cfg: TrainConfig, tmp: Path
) -> dict[str, float]:
    """R1's two timings: an extraction epoch (after a warm-up epoch: page cache, kernels,
    workers) and a one-to-many online training epoch of ``PLAN``, each the best of two."""
    n = len(splits.train)
    extraction_epoch(backbone, splits, taps, cfg)  # warm-up
    e = best_of(2, lambda: extraction_epoch(backbone, splits, taps, cfg))
    print(f"extraction epoch ({n} images): {e:.1f} s = {n / e:.1f} img/s")
    trainer = trainer_for(backbone, splits, PLAN, cfg, tmp / "online")
    t_online = best_of(2, lambda: training_epoch(trainer))
    print(f"one-to-many online epoch ({len(trainer.members.names)} adapters): {t_online:.1f} s")
    return {"extraction_epoch": e, "online_epoch": t_online}


def time_cached(
    backbone: Backbone, splits: Splits, taps: list[str], batch_size: int, tmp: Path
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """R2's timing: building the activation cache of the training split, then a one-to-many
    epoch of ``PLAN`` from it (best of three after a warm-up); and from the same cache the unit
    cost of a grid (``cached_cost``)."""
    t0 = time.perf_counter()
    cache_dir = build_cache(
        backbone, splits.train, taps, tmp / "cache", progress=False, batch_size=batch_size
    )
    t_build = time.perf_counter() - t0
    caches = {"train": ActivationCache(cache_dir)}
    nocfg = TrainConfig(batch_size=batch_size, progress=False, augment=False)
    cached = trainer_for(backbone, splits, PLAN, nocfg, tmp / "cached", caches)
    training_epoch(cached)  # warm-up
    t_cached = best_of(3, lambda: training_epoch(cached))
    print(f"cache build: {t_build:.1f} s; one-to-many epoch from the cache: {t_cached:.2f} s")
    cost = cached_cost(backbone, splits, caches, tmp, PLAN)
    for row in cost:
        print(f"  cached cost: {row['what']}: {row['us_per_image_per_adapter']:.1f} us, "
              f"{row['achieved_gflops']:.1f} GFLOP/s by the FLOP model "
              f"(first epoch {row['first_epoch_s']:.1f} s)")  # fmt: skip
    return {"cache_build": t_build, "cached_epoch": t_cached}, cost


def time_separate_runs(
    backbone: Backbone, data: str, small: int, cfg: TrainConfig, tmp: Path
) -> dict[str, float]:
    """R3's timings, on a subset of ``small`` images: every adapter of ``PLAN`` as its own run
    (its own backbone pass), summed, and the one-to-many run of them all."""
    sub = make_splits(data, train_size=small, val_size=64, test_size=64, seed=0)
    many = trainer_for(backbone, sub, PLAN, cfg, tmp / "small")
    t_many = training_epoch(many)
    t_separate = 0.0
    for name in many.members.names:
        spec = many.members.specs[name]
        plan = f"{spec.kind} taps={spec.tap} lr={spec.lr}"
        t_separate += training_epoch(trainer_for(backbone, sub, plan, cfg, tmp / f"alone-{name}"))
    print(
        f"{len(many.members.names)} separate runs: {t_separate:.1f} s vs one-to-many "
        f"{t_many:.1f} s ({small} images)"
    )
    return {"separate_runs": t_separate, "one_to_many_small": t_many}


def time_curve(
    backbone: Backbone, data: str, curve_n: int, taps: list[str], cfg: TrainConfig, tmp: Path
) -> tuple[list[dict[str, Any]], float]:
    """The epoch time, online and from the cache, against the number of adapters
    (``CURVE_PLANS``) on ``curve_n`` images; and that subset's extraction epoch."""
    curve_splits = make_splits(data, train_size=curve_n, val_size=64, test_size=64, seed=0)
    cache_dir = build_cache(backbone, curve_splits.train, taps, tmp / "curve-cache",
                            progress=False, batch_size=cfg.batch_size)  # fmt: skip
    caches = {"train": ActivationCache(cache_dir)}
    nocfg = TrainConfig(batch_size=cfg.batch_size, progress=False, augment=False)
    curve = []
    e_curve = extraction_epoch(backbone, curve_splits, taps, cfg)
    for count, plan in CURVE_PLANS.items():
        on = training_epoch(trainer_for(backbone, curve_splits, plan, cfg, tmp / f"c{count}"))
        tr = trainer_for(backbone, curve_splits, plan, nocfg, tmp / f"cc{count}", caches)
        assert len(tr.members.names) == count
        training_epoch(tr)  # warm-up
        off = best_of(2, lambda tr=tr: training_epoch(tr))
        curve.append({"adapters": count, "online_s": on, "cached_s": off,
                      "online_vs_extraction": on / e_curve,
                      "cached_vs_extraction": off / e_curve})  # fmt: skip
        print(
            f"  {count:>3} adapters: online {on:6.2f} s, cached {off:6.3f} s "
            f"(extraction {e_curve:.2f} s, {curve_n} images)"
        )
    return curve, e_curve


def gemm_peak(backbone: Backbone, batch: int) -> dict[str, dict[str, float]]:
    """This machine's matmul GFLOP/s at the shapes of a tap's shared pooling (16 adapters of
    6 heads on the deepest tap) and at a large square, bf16 and fp32."""
    from inca.bench.flop_model import gemm_peaks

    info = list(backbone.taps.values())[-1]
    peaks = gemm_peaks(info.tokens, info.dim, batch, rows=16 * 6)
    print("matmul peak GFLOP/s: " + ", ".join(f"{k} {v['square_2048']:.0f} (pooling shape "
                                              f"{v['pooling_shape']:.0f})"
                                              for k, v in peaks.items()))  # fmt: skip
    return peaks


def measure_memory(model: str, image_size: int, data: str, batch_size: int) -> dict[str, float]:
    """R4's two peaks: resident memory of extraction alone and of one-to-many training, each an
    epoch on 256 images in a fresh process."""
    args = {"model": model, "image_size": image_size, "data": data, "n": 256, "val": 64,
            "batch_size": batch_size}  # fmt: skip
    extract, train = peak_memory("extract", args), peak_memory("train", args)
    print(f"peak RSS: extraction {extract:.0f} MiB, one-to-many training {train:.0f} MiB")
    return {"extraction": extract, "one_to_many_training": train}


def measure_throughput(model: str) -> dict[str, Any]:
    """The backbone's images/s at 112 and 224 px (fp32, bf16); a stack of InCA adapters'."""
    print("backbone throughput and adapter computation ...")
    return {
        "backbone_images_per_s": {f"{s}px": backbone_throughput(model, s) for s in (112, 224)},
        "adapter_stack_images_per_s": adapter_compute(),
    }
