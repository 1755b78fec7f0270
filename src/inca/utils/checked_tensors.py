"""Safetensors files that know when they are damaged: each tensor's CRC32 (over its dtype, shape
and bytes) rides in the file's metadata and is checked on load.

safetensors itself checks the header's structure but not the data: one flipped byte in a
weight loads silently as a wrong number (often NaN). The activation cache has carried CRC32s
from the start; checkpoints and saved tasks use this module. Files written before it (no
``crc32`` entry) still load, unchecked."""

from __future__ import annotations

import json
import os
import zlib

import torch
from torch import Tensor

from inca.errors import IncaError

KEY = "crc32"


def tensor_crc(t: Tensor) -> int:
    """CRC32 of a tensor's dtype, shape and bytes (a header that lies about either fails too)."""
    t = t.detach().cpu().contiguous()
    crc = zlib.crc32(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.numel():
        crc = zlib.crc32(t.view(-1).view(torch.uint8).numpy(), crc)
    return crc


def save_checked(
    tensors: dict[str, Tensor], file: str | os.PathLike, metadata: dict[str, str]
) -> None:
    """``safetensors.torch.save_file`` with every tensor's CRC32 in the metadata."""
    from safetensors.torch import save_file

    crcs = {k: tensor_crc(v) for k, v in tensors.items()}
    save_file(tensors, str(file), metadata=metadata | {KEY: json.dumps(crcs, sort_keys=True)})


def verify(
    tensors: dict[str, Tensor], metadata: dict[str, str] | None, file: object, fix: str
) -> None:
    """Refuse ``tensors`` read from ``file`` when a checksum disagrees (``fix``: what to do)."""
    recorded = (metadata or {}).get(KEY)
    if recorded is None:
        return  # written before checksums
    try:
        crcs = json.loads(recorded)
    except json.JSONDecodeError:
        raise IncaError(f"{file}: its checksums are unreadable, so it is damaged; {fix}") from None
    if set(crcs) != set(tensors):
        raise IncaError(f"{file}: its tensors do not match its checksums (damaged); {fix}")
    bad = [k for k, t in tensors.items() if tensor_crc(t) != crcs[k]]
    if bad:
        raise IncaError(
            f"{file} is corrupt: {len(bad)} tensor(s) fail their checksum (e.g. {bad[0]!r}); {fix}"
        )


def require_finite(tensors: dict[str, Tensor], file: object, fix: str) -> None:
    """Refuse weights holding NaN or inf (a diverged training run saved by an older inca)."""
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not t.isfinite().all()]
    if bad:
        raise IncaError(f"{file}: tensor {bad[0]!r} holds NaN or inf values; {fix}")
