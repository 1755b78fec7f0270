"""The on-disk activation cache: flat memory-mapped arrays beside a JSON header (nanoGPT's habit).

A cache directory holds one split's tokens for some taps of one backbone:

    header.json          what the arrays are (below), written atomically, rewritten as rows land
    tap.<name>.bin       (views * N, T, D) normalised tokens, float16 / bfloat16 / float32
    labels.bin           (N,) int64 class indices
    indices.bin          (N,) int64 positions in the source dataset

Row ``v * N + i`` of a tap file is view ``v`` of image ``i``. The tokens are stored already
LayerNorm'd without affine (x̂), which is all an adapter reads, so training from the cache does
no normalisation at all. The header records the request (backbone name and weights hash, taps
and shapes, dtype, preprocessing, dataset fingerprint, split indices, views and augmentation),
progress (``rows_done``) and, once complete, a CRC32 per file so corruption is detected.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inca.data.views import views_of
from inca.errors import IncaError

VERSION = 1
HEADER = "header.json"
DTYPES: dict[str, tuple[np.dtype, torch.dtype]] = {
    "float16": (np.dtype(np.float16), torch.float16),
    "bfloat16": (np.dtype(np.uint16), torch.bfloat16),  # numpy has no bf16: stored as raw bits
    "float32": (np.dtype(np.float32), torch.float32),
}
# what must be equal for a cache to serve a request (the rest is progress and bookkeeping)
REQUEST_KEYS = ("version", "backbone", "taps", "dtype", "data", "views", "augment", "seed",
                "view_set")  # fmt: skip


def tap_file(tap: str) -> str:
    return f"tap.{tap}.bin"


def indices_hash(indices: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(indices, dtype="<i8").tobytes()).hexdigest()[:16]


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:  # ("auto" is resolved against the backbone before this)
        raise IncaError(f"unknown cache dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    return dtype


def make_request(
    backbone_info: dict,
    taps: dict[str, list[int]],
    dtype: str,
    data: dict,
    views: int,
    augment: bool,
    seed: int,
    view_set: str = "none",
) -> dict[str, Any]:
    """The header fields that identify what a cache holds (JSON-normalised for comparing).

    ``view_set`` (``inca.data.views``): the rows of view v are that set's v-th exact view of
    each image (``views`` is then the set's size, and nothing is augmented); recorded only
    when not "none", so caches made before view sets compare equal."""
    if views < 1:
        raise IncaError(f"views must be at least 1, got {views}")
    if view_set != "none":
        wanted = len(views_of(view_set))
        if views != wanted or augment:
            raise IncaError(
                f"the view set {view_set!r} caches its {wanted} exact views, not augmented ones; "
                "cache either augmented views (--cache-views) or a view set (--views)"
            )
    elif views > 1 and not augment:
        raise IncaError(
            "several views of an image are only different with augmentation; "
            "use views=1 or turn augmentation on"
        )
    request = {
        "version": VERSION,
        "backbone": backbone_info,
        "taps": taps,
        "dtype": check_dtype(dtype),
        "data": data,
        "views": views,
        "augment": augment,
        "seed": seed,
    } | ({"view_set": view_set} if view_set != "none" else {})
    return json.loads(json.dumps(request))


def differences(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """Readable differences between a cache's request and the one at hand."""
    out = []
    for key in REQUEST_KEYS:
        a, b = saved.get(key), wanted.get(key)
        if key == "taps" and isinstance(a, dict) and isinstance(b, dict):
            missing = [t for t in b if t not in a]
            if missing:
                out.append(f"taps {missing} are not cached (cached: {', '.join(a)})")
            out += [f"tap {t} shape {a[t]} vs {b[t]}" for t in b if t in a and a[t] != b[t]]
        elif isinstance(a, dict) and isinstance(b, dict):
            out += [
                f"{key}.{k}: cached {a.get(k)!r}, wanted {b.get(k)!r}"
                for k in sorted(a.keys() | b.keys())
                if a.get(k) != b.get(k)
            ]
        elif a != b:
            out.append(f"{key}: cached {a!r}, wanted {b!r}")
    return out


def row_bytes(taps: dict[str, list[int]], dtype: str) -> int:
    itemsize = DTYPES[dtype][0].itemsize
    return sum(t * d for t, d in taps.values()) * itemsize


def read_header(directory: Path) -> dict[str, Any]:
    path = Path(directory) / HEADER
    try:
        header = json.loads(path.read_text())
    except FileNotFoundError:
        raise IncaError(
            f"no activation cache at {directory} ({HEADER} is missing); build one with `inca cache`"
        ) from None
    except (OSError, ValueError) as e:
        raise IncaError(
            f"{path} is unreadable or corrupt ({e}); delete {directory} and build the cache again"
        ) from e
    if not isinstance(header, dict) or header.get("format") != "inca-activation-cache":
        raise IncaError(f"{path} is not an inca activation cache header")
    fix = f"delete {directory} and build the cache again"
    saved = header.pop(HEADER_CRC, None)
    if saved is not None and saved != header_crc(header):
        raise IncaError(f"{path} was changed or damaged (its checksum differs); {fix}")
    missing = [k for k in HEADER_KEYS if k not in header]
    if missing:
        raise IncaError(f"{path} lacks {', '.join(missing)}; {fix}")
    if header["dtype"] not in DTYPES or not isinstance(header["taps"], dict):
        raise IncaError(f"{path} names an unknown dtype or malformed taps; {fix}")
    if not 0 <= header["rows_done"] <= header["rows"] or header["rows"] % header["views"]:
        raise IncaError(
            f"{path} is inconsistent ({header['rows']} rows, {header['rows_done']} done, "
            f"{header['views']} views); {fix}"
        )
    return header


HEADER_CRC = "header_crc32"
HEADER_KEYS = ("version", "taps", "dtype", "views", "rows", "rows_done", "complete", "crc32")


def header_crc(header: dict[str, Any]) -> int:
    """CRC32 of a header's content (its own checksum left out): a header whose dtype, shapes
    or row counts were edited or damaged is refused, as damaged tap files are."""
    body = {k: v for k, v in header.items() if k != HEADER_CRC}
    return zlib.crc32(json.dumps(body, sort_keys=True).encode())


def write_header(directory: Path, header: dict[str, Any]) -> None:
    """``header.json``, atomically, with its checksum."""
    from inca.utils.io import write_json

    write_json(Path(directory) / HEADER, header | {HEADER_CRC: header_crc(header)})
