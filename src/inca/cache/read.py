"""Reading an activation cache: checked before use, then batches of normalised tokens."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from inca.adapters.tap_batch import TapBatch
from inca.cache.build import file_crc32
from inca.cache.format import DTYPES, differences, read_header, tap_file
from inca.errors import IncaError


class ActivationCache:
    """A complete cache directory, opened read-only.

    On open: the header must say complete, every file must have its expected size (a truncated
    file is refused) and, with ``verify`` (default), its CRC32 (one sequential read, which also
    warms the page cache for the first epoch).
    """

    def __init__(self, directory: str | Path, verify: bool = True) -> None:
        self.directory = d = Path(directory)
        self.header = h = read_header(d)
        if not h.get("complete"):
            raise IncaError(
                f"the activation cache at {d} is incomplete ({h.get('rows_done')}/"
                f"{h.get('rows')} rows); run the same `inca cache` (or train) "
                "command again to finish it: it resumes"
            )
        self.n, self.views, self.dtype = h["data"]["n"], h["views"], h["dtype"]
        self.view_set: str = h.get("view_set", "none")  # exact views (inca.data.views)
        self.shapes: dict[str, list[int]] = h["taps"]
        np_dtype, self.torch_dtype = DTYPES[self.dtype]
        expected = {
            tap_file(t): h["rows"] * s[0] * s[1] * np_dtype.itemsize for t, s in self.shapes.items()
        } | {"labels.bin": 8 * self.n, "indices.bin": 8 * self.n}
        for name, size in expected.items():
            path = d / name
            actual = path.stat().st_size if path.exists() else None
            if actual != size:
                raise IncaError(
                    f"activation cache file {path} is "
                    f"{'missing' if actual is None else f'{actual} bytes'}, expected "
                    f"{size}: truncated or damaged; delete {d} and build it again"
                )
            if verify and file_crc32(path) != h["crc32"].get(name):
                raise IncaError(
                    f"activation cache file {path} fails its checksum: corrupted; "
                    f"delete {d} and build it again"
                )
        self.labels = torch.from_numpy(np.fromfile(d / "labels.bin", dtype="<i8"))
        self.indices = torch.from_numpy(np.fromfile(d / "indices.bin", dtype="<i8"))
        # the read buffers, reused batch after batch: key -> (tokens, a scratch of rows)
        self._buffers: dict[Any, tuple[Tensor, np.ndarray]] = {}
        self.arrays = {
            t: np.memmap(d / tap_file(t), np_dtype, "r", shape=(h["rows"], *s))
            for t, s in self.shapes.items()
        }

    @property
    def nbytes(self) -> int:
        """The cache's size on disk."""
        return sum(f.stat().st_size for f in self.directory.iterdir() if f.is_file())

    def check(self, request: dict[str, Any]) -> None:
        """Refuse to serve a request this cache was not built for, saying what differs."""
        diff = differences(self.header, request)
        if diff:
            raise IncaError(
                f"the activation cache at {self.directory} does not match this run: "
                f"{'; '.join(diff)}. Build a new cache (another directory) or use "
                "the cached settings"
            )

    def read(
        self,
        positions: Tensor | np.ndarray,
        taps: Sequence[str],
        view: int | Tensor | np.ndarray = 0,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor | TapBatch:
        """Normalised tokens of images ``positions`` (0..n-1) for ``taps``, view ``view`` (one
        for all, or one per position):
        (n_taps, B, T, D) in ``dtype`` (a ``TapBatch`` of per-tap tensors when the taps'
        shapes differ).

        The result lives in a buffer that the next ``read`` of the same shape overwrites
        (training uses each batch before reading the next). Reusing buffers matters on CPU: a
        fresh 77 MB tensor per batch costs more in page faults than the copy itself (4x here).
        When ``dtype`` is the stored dtype, rows are gathered straight into it: no conversion.
        """
        rows = np.asarray(positions, dtype=np.int64) + (np.asarray(view) % self.views) * self.n
        shapes = {tuple(self.shapes[t]) for t in taps}
        if len(shapes) > 1:  # taps of other shapes (a CNN's stages): one tensor per tap
            return TapBatch([self._gather(rows, [t], dtype, ("ragged", t))[0] for t in taps])
        return self._gather(rows, taps, dtype, "stacked")

    def _gather(self, rows: np.ndarray, taps: Sequence[str], dtype: torch.dtype, key: Any
                ) -> Tensor:  # fmt: skip
        """Rows ``rows`` of ``taps`` (one shape) into the reused buffer named ``key``:
        (n_taps, B, T, D) in ``dtype``."""
        t0, d0 = self.shapes[taps[0]]
        shape = (len(taps), len(rows), t0, d0)
        out, scratch = self._buffers.get(key, (None, None))
        if out is None or out.shape != shape or out.dtype != dtype:
            out = torch.empty(shape, dtype=dtype)
            scratch = np.empty(shape[1:], dtype=DTYPES[self.dtype][0])
            self._buffers[key] = (out, scratch)
        direct = dtype == self.torch_dtype
        for i, tap in enumerate(taps):
            if direct:  # gather into the output itself (bf16 seen as its raw uint16 bits)
                target = out[i].view(torch.uint16) if dtype == torch.bfloat16 else out[i]
                np.take(self.arrays[tap], rows, axis=0, out=target.numpy())
                continue
            np.take(self.arrays[tap], rows, axis=0, out=scratch)  # B rows, stored dtype
            block = torch.from_numpy(scratch)
            if self.dtype == "bfloat16":
                block = block.view(torch.bfloat16)
            out[i].copy_(block)  # converts
        return out
