"""Resumable training state in ONE safetensors file, replaced atomically after every epoch.

Tensors (current adapters, best-epoch adapters, best-epoch validation probabilities, AdamW
moments) are safetensors entries; everything else (epoch, step, best accuracies, optimiser
groups, the run's signature) is JSON in the file's metadata. Nothing is unpickled on load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from inca.errors import IncaError
from inca.utils.checked_tensors import save_checked, verify
from inca.utils.io import atomic_write, json_safe

FILE = "checkpoint.safetensors"
FIX = "delete it to start the run again, or use another --out"


def flatten(prefix: str, state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {f"{prefix}/{k}": v.detach().cpu().contiguous() for k, v in state.items()}


def unflatten(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    p = prefix + "/"
    return {k[len(p) :]: v for k, v in tensors.items() if k.startswith(p)}


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], list[dict]]:
    """AdamW state as flat tensors + its param groups (without the tensors) as JSON."""
    sd = opt.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            tensors[f"optim/{idx}/{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    return tensors, sd["param_groups"]


def optimizer_from_tensors(
    opt: torch.optim.Optimizer, tensors: dict[str, Tensor], groups: list[dict]
) -> None:
    state: dict[int, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, idx, name = key.split("/", 2)
            state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": groups})


def save(out_dir: Path, tensors: dict[str, Tensor], meta: dict[str, Any], name: str = FILE) -> Path:
    path = Path(out_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        text = json.dumps(json_safe(meta), sort_keys=True, allow_nan=False)
        save_checked(tensors, tmp, {"inca": text})
    return path


def load(out_dir: Path, name: str = FILE) -> tuple[dict[str, Tensor], dict[str, Any]]:
    from safetensors import SafetensorError, safe_open

    path = Path(out_dir) / name
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            meta = json.loads(metadata["inca"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, KeyError, ValueError) as e:
        raise IncaError(f"checkpoint {path} is unreadable or corrupt ({e}); {FIX}") from e
    verify(tensors, metadata, f"checkpoint {path}", FIX)
    return tensors, meta


def read_meta(out_dir: Path, name: str = FILE) -> dict[str, Any]:
    """The checkpoint's JSON metadata alone (its tensors unread): to check a resume is allowed
    before anything is written."""
    from safetensors import SafetensorError, safe_open

    path = Path(out_dir) / name
    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {})["inca"])
    except (SafetensorError, OSError, KeyError, ValueError) as e:
        raise IncaError(f"checkpoint {path} is unreadable or corrupt ({e}); {FIX}") from e
