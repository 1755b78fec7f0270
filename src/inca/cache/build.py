"""Writing an activation cache: one backbone pass over a split, resumable and atomic.

Rows are written in order into pre-sized memory-mapped files; the header's ``rows_done`` moves
on only after the rows before it are flushed, so an interrupted extraction resumes where it
stopped and never trusts a half-written row. Before anything is written, the size is estimated
and checked against the free disk space.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from inca.adapters.base import stack_taps
from inca.backbones.base import Backbone
from inca.cache.format import (
    DTYPES,
    HEADER,
    differences,
    indices_hash,
    make_request,
    read_header,
    row_bytes,
    tap_file,
    write_header,
)
from inca.data import ImageTransform, Subset, make_loader
from inca.data.views import apply_view, views_of
from inca.errors import IncaError
from inca.utils.distributed import agree, barrier, my_share, on_main, world
from inca.utils.run_lock import exclusive

SAVE_EVERY_S = 20.0  # how often progress is made durable during extraction
DISK_MARGIN = 1.05  # keep 5% headroom beyond the estimate


def subset_info(subset: Subset) -> dict[str, Any]:
    """What identifies the images of a split: the dataset's fingerprint and the indices."""
    return {
        "dataset": subset.dataset.name,
        "dataset_split": subset.dataset.split,
        "fingerprint": subset.dataset.fingerprint(),
        "indices": indices_hash(subset.indices),
        "n": len(subset),
    }


def resolve_dtype(dtype: str, backbone: Backbone) -> str:
    """ "auto": bfloat16 when the backbone's tokens are bf16 (adapters then read them without a
    conversion), else float16 (finer than bf16 for normalised tokens)."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if backbone.precision.output_dtype == torch.bfloat16 else "float16"


def cache_request(
    backbone: Backbone,
    subset: Subset,
    taps: Sequence[str],
    dtype: str,
    views: int,
    augment: bool,
    seed: int,
    view_set: str = "none",
) -> dict[str, Any]:
    dtype = resolve_dtype(dtype, backbone)
    shapes = {t: list(backbone.taps[t].shape) for t in backbone.validate_taps(list(taps))}
    return make_request(
        backbone.identity(), shapes, dtype, subset_info(subset), views, augment, seed, view_set
    )


def file_crc32(path: Path) -> str:
    crc = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            crc = zlib.crc32(chunk, crc)
    return f"{crc:08x}"


def reserve(file: Path, size: int) -> None:
    """Create ``file`` with ``size`` bytes of disk really allocated. A sparse file (what a
    memmap makes) takes its blocks only when written, so a disk that fills during the build
    kills the process with a bare SIGBUS; allocating first fails here, with a message."""
    fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if size:
            os.posix_fallocate(fd, 0, size)
    except OSError as e:
        os.close(fd)
        file.unlink(missing_ok=True)
        if e.errno == errno.EOPNOTSUPP:  # a file system without fallocate: sparse, as before
            np.memmap(file, np.uint8, "w+", shape=(max(size, 1),)).flush()
            return
        raise IncaError(
            f"cannot reserve {size / 2**30:.2f} GiB for {file} ({e.strerror}); free disk space "
            "or cache fewer taps (--taps), then run again"
        ) from None
    os.close(fd)


def check_disk(directory: Path, needed: int, what: str = "") -> None:
    """Refuse, before anything is extracted, a cache of ``needed`` bytes that ``directory``'s
    disk cannot hold; ``what`` says where the size comes from (e.g. the views)."""
    free = shutil.disk_usage(directory).free
    if needed * DISK_MARGIN > free:
        raise IncaError(
            f"the activation cache needs {needed / 2**30:.2f} GiB{what} but {directory} has "
            f"{free / 2**30:.2f} GiB free; free some space, cache fewer taps or views, or use "
            "dtype float16/bfloat16"
        )


def build_cache(
    backbone: Backbone,
    subset: Subset,
    taps: Sequence[str],
    directory: str | Path,
    views: int = 1,
    augment: bool = False,
    dtype: str = "auto",
    batch_size: int = 64,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
    view_set: str = "none",
) -> Path:
    """Extract ``taps`` for every image of ``subset`` (``views`` augmented views each, or each
    exact view of ``view_set``: ``inca.data.views``) to ``directory``. A complete matching
    cache is reused; an interrupted one is resumed. The directory is locked while this runs: a
    second process building it gets a clear error."""
    directory = Path(directory)
    if view_set != "none":
        if augment or views not in (1, len(views_of(view_set))):
            raise IncaError(
                f"the view set {view_set!r} caches its {len(views_of(view_set))} exact views, "
                f"not {views} augmented ones; pass view_set alone (or augment with views=K "
                "and no view set)"
            )
        views = len(views_of(view_set))
    with exclusive(directory, "cache"):
        return _build(backbone, subset, taps, directory, views, augment, dtype, batch_size, seed,
                      workers, progress, view_set)  # fmt: skip


def _build(
    backbone: Backbone,
    subset: Subset,
    taps: Sequence[str],
    directory: Path,
    views: int,
    augment: bool,
    dtype: str,
    batch_size: int,
    seed: int,
    workers: int | None,
    progress: bool,
    view_set: str,
) -> Path:
    request = cache_request(backbone, subset, taps, dtype, views, augment, seed, view_set)
    n, shapes, dtype = len(subset), request["taps"], request["dtype"]
    total_rows = views * n
    agree({"request": request, "batch_size": batch_size, "directory": str(directory.resolve())},
          "the activation cache they build")  # fmt: skip
    header = on_main(lambda: _open_or_create(directory, subset, request, total_rows))
    if header is None:  # complete: nothing to do
        return directory
    arrays = {
        tap: np.memmap(directory / tap_file(tap), DTYPES[dtype][0], "r+", shape=(total_rows, t, d))
        for tap, (t, d) in shapes.items()
    }
    job = _Extraction(backbone, subset, shapes, directory, header, arrays, views, augment, dtype,
                      batch_size, seed, workers, progress, views_of(view_set))  # fmt: skip
    if world().distributed:
        _extract_sharded(job)
        if not world().is_main:
            barrier()  # rank 0 checksums the files and marks the cache complete
            return directory
    else:
        _extract(job)
    header["crc32"] = {
        f: file_crc32(directory / f)
        for f in [tap_file(t) for t in shapes] + ["labels.bin", "indices.bin"]
    }
    header["complete"] = True
    write_header(directory, header)
    barrier()
    return directory


def _open_or_create(
    directory: Path, subset: Subset, request: dict[str, Any], total_rows: int
) -> dict[str, Any] | None:
    """The header of the cache being built at ``directory``: resumed (same request), or new
    (files allocated, header written); None when it is complete already. Rank 0's job."""
    n, shapes, dtype = len(subset), request["taps"], request["dtype"]
    if (directory / HEADER).exists():
        header = read_header(directory)
        diff = differences(header, request) + ([] if header["taps"] == shapes else ["taps"])
        if diff:
            raise IncaError(
                f"{directory} already holds another activation cache ({'; '.join(diff)}"
                "); delete it or choose another directory"
            )
        if header["complete"]:
            return None
        print(
            f"resuming the activation cache at {directory}: {header['rows_done']}/"
            f"{total_rows} rows done"
        )
    else:
        directory.mkdir(parents=True, exist_ok=True)
        what = f" ({n} images x {total_rows // n} views)" if total_rows > n else ""
        check_disk(directory, total_rows * row_bytes(shapes, dtype) + 16 * n, what)
        header = request | {
            "format": "inca-activation-cache",
            "rows_done": 0,
            "complete": False,
            "rows": total_rows,
            "crc32": {},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        np.asarray(subset.labels, dtype="<i8").tofile(directory / "labels.bin")
        np.asarray(subset.indices, dtype="<i8").tofile(directory / "indices.bin")
        np_dtype = DTYPES[dtype][0]
        for tap, (t, d) in shapes.items():  # pre-sized (sparse) files
            reserve(directory / tap_file(tap), total_rows * t * d * np.dtype(np_dtype).itemsize)
        write_header(directory, header)
    return header


@dataclass
class _Extraction:
    """One cache build in progress: what it reads, where it writes, and how."""

    backbone: Backbone
    subset: Subset
    shapes: dict[str, list[int]]
    directory: Path
    header: dict[str, Any]
    arrays: dict[str, np.memmap]
    views: int
    augment: bool
    dtype: str
    batch_size: int
    seed: int
    workers: int | None
    progress: bool
    view_set: tuple[int, ...]  # exact view of each cached view (one: (0,), as they come)

    def transform(self) -> ImageTransform:
        return ImageTransform(self.backbone.preprocess, augment=self.augment,
                              allow_hflip=self.subset.dataset.allow_hflip)  # fmt: skip

    def loader(self, indices: np.ndarray, view: int) -> Any:
        """Batches of the subset's images at ``indices`` for view ``view`` (its seed)."""
        part = Subset(self.subset.dataset, indices)
        return make_loader(part, self.transform(), self.batch_size,
                           seed=self.seed * 1000 + view, num_workers=self.workers)  # fmt: skip

    def write(self, pixels: Tensor, first_row: int, view: int = 0) -> None:
        """The taps' normalised tokens of ``pixels`` (cached view ``view``) into rows
        ``first_row...``."""
        if len(self.view_set) > 1:
            pixels = apply_view(pixels, self.view_set[view])
        tokens = self.backbone.forward_taps(pixels, list(self.shapes))
        x = stack_taps(tokens, list(self.shapes), normalize=True)  # a TapBatch if ragged
        rows = slice(first_row, first_row + len(pixels))
        for i, tap in enumerate(self.shapes):
            tap_x = x[i].to(DTYPES[self.dtype][1]).cpu()
            bits = tap_x.view(torch.uint16) if self.dtype == "bfloat16" else tap_x
            self.arrays[tap][rows] = bits.numpy()


def _extract(job: _Extraction) -> None:
    """One process: every remaining row, in order, progress saved every ``SAVE_EVERY_S``."""
    n, total_rows = len(job.subset), job.views * len(job.subset)
    done = job.header["rows_done"]
    bar = tqdm(total=total_rows, initial=done, desc=f"cache {job.directory.name}", unit="img",
               disable=not job.progress, dynamic_ncols=True)  # fmt: skip
    last_save = time.perf_counter()
    try:
        while done < total_rows:
            view, start = divmod(done, n)
            for pixels, _, _ in job.loader(job.subset.indices[start:], view):
                job.write(pixels, done, view)
                done += len(pixels)
                bar.update(len(pixels))
                if time.perf_counter() - last_save > SAVE_EVERY_S:
                    _save_progress(job.directory, job.header, job.arrays, done)
                    last_save = time.perf_counter()
    finally:
        bar.close()
        _save_progress(job.directory, job.header, job.arrays, done)


def _save_progress(directory: Path, header: dict, arrays: dict, done: int) -> None:
    for a in arrays.values():
        a.flush()  # the rows must be on disk before the header says they are
    header["rows_done"] = done
    write_header(directory, header)


def _extract_sharded(job: _Extraction) -> None:
    """Under torchrun: the remaining batches, exactly the batches one process would make, dealt
    round-robin to the ranks; each writes its rows into the shared files. After every round
    all ranks flush and wait, so rank 0 may record the finished prefix in the header: the
    cache is byte-identical to one process's, and an interrupted build resumes."""
    n, w, size = len(job.subset), world(), job.batch_size
    batches = [(v, s) for v in range(job.views) for s in range(0, n, size)]  # as _extract
    todo = [b for b in batches if b[0] * n + b[1] >= job.header["rows_done"]]
    rounds = -(-len(todo) // w.size)
    mine = [todo[i] for i in my_share(len(todo))]
    loaders = {}  # view -> this rank's batches of that view, in order
    for v in sorted({b[0] for b in mine}):
        positions = np.concatenate([np.arange(s, min(s + size, n)) for u, s in mine if u == v])
        loaders[v] = iter(job.loader(job.subset.indices[positions], v))
    bar = tqdm(
        total=len(todo),
        desc=f"cache {job.directory.name} ({w.size} ranks)",
        unit="batch",
        disable=not (job.progress and w.is_main),
        dynamic_ncols=True,
    )
    last_save = time.perf_counter()
    for r in range(rounds):
        k = r * w.size + w.rank
        if k < len(todo):
            view, start = todo[k]
            job.write(next(loaders[view])[0], view * n + start, view)
            for a in job.arrays.values():
                a.flush()  # on disk before rank 0 may say so
        barrier()
        bar.update(min(w.size, len(todo) - r * w.size))
        v, s = todo[min(len(todo), (r + 1) * w.size) - 1]
        if w.is_main and (r == rounds - 1 or time.perf_counter() - last_save > SAVE_EVERY_S):
            _save_progress(
                job.directory, job.header, job.arrays, min(v * n + s + size, (v + 1) * n)
            )
            last_save = time.perf_counter()
    bar.close()
