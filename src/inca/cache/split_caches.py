"""The activation caches of a run's train, val and test splits under one root, and what building
them cost (``build.json``: reports count the cache in the cost of the methods trained from it)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from inca.backbones.base import Backbone
from inca.cache.build import build_cache, cache_request, check_disk
from inca.cache.format import read_header, row_bytes
from inca.cache.read import ActivationCache
from inca.data import Splits
from inca.data.views import views_of
from inca.utils.distributed import world
from inca.utils.io import write_json


def open_caches(
    backbone: Backbone,
    splits: Splits,
    taps: list[str],
    root: Path,
    views: int,
    dtype: str,
    batch_size: int,
    seed: int,
    workers: int | None = None,
    progress: bool = True,
    view_set: str = "none",
    test_views: bool = False,
) -> dict[str, ActivationCache]:
    """The activation cache of each split under ``root``: reused when it matches, finished when
    interrupted, built when absent, refused (with the differences) when it is another's.
    ``views`` augmented views of each training image, or each exact view of ``view_set``
    (``inca.data.views``), for validation and test too with ``test_views``."""
    caches, started, built_any = {}, time.perf_counter(), False
    plans = {split: _plan(split, views, view_set, test_views) for split in SPLITS}
    _check_disk_first(backbone, splits, taps, root, plans, dtype, seed)
    for split, (v, augment, exact) in plans.items():
        subset = getattr(splits, split)
        directory = root / split
        built = False
        if not _complete(directory):
            build_cache(
                backbone,
                subset,
                taps,
                directory,
                views=v,
                augment=augment,
                dtype=dtype,
                batch_size=batch_size,
                seed=seed,
                workers=workers,
                progress=progress,
                view_set=exact,
            )
            built = built_any = True
        # just built here: its checksums were computed from the bytes on disk a moment ago,
        # so reading them all again would only cost time (a reused cache is verified)
        cache = ActivationCache(directory, verify=not built)
        cache.check(cache_request(backbone, subset, taps, dtype, v, augment, seed, exact))
        caches[split] = cache
    if built_any and world().is_main:  # what the passes cost, for reports that count it in
        write_json(root / BUILD_RECORD, {"seconds": time.perf_counter() - started})
    return caches


BUILD_RECORD = "build.json"
SPLITS = ("train", "val", "test")


def _plan(split: str, views: int, view_set: str, test_views: bool) -> tuple[int, bool, str]:
    """(views per image, augmented?, exact view set) of ``split``'s cache."""
    exact = view_set if split == "train" or test_views else "none"
    v = len(views_of(exact)) if exact != "none" else (views if split == "train" else 1)
    return v, split == "train" and v > 1 and exact == "none", exact


def _complete(directory: Path) -> bool:
    return (directory / "header.json").exists() and read_header(directory)["complete"]


def _check_disk_first(
    backbone: Backbone,
    splits: Splits,
    taps: list[str],
    root: Path,
    plans: dict[str, tuple[int, bool, str]],
    dtype: str,
    seed: int,
) -> None:
    """Refuse the whole run's caches before the first is extracted when the disk cannot hold
    them all (with views, the validation and test caches come after hours of training ones)."""
    needed, parts = 0, []
    for split, (v, augment, exact) in plans.items():
        if (root / split / "header.json").exists():  # allocated already (or complete)
            continue
        subset = getattr(splits, split)
        request = cache_request(backbone, subset, taps, dtype, v, augment, seed, exact)
        needed += v * len(subset) * row_bytes(request["taps"], request["dtype"]) + 16 * len(subset)
        parts.append(f"{split} {len(subset)} x {v} views" if v > 1 else f"{split} {len(subset)}")
    if needed and world().is_main:
        root.mkdir(parents=True, exist_ok=True)
        check_disk(root, needed, f" ({', '.join(parts)} images)")


def build_seconds(root: Path) -> float | None:
    """Seconds the cache under ``root`` took to build (None when unrecorded)."""
    try:
        return float(json.loads((root / BUILD_RECORD).read_text())["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
