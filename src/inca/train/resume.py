"""What resuming a run needs besides the checkpoint's tensors: the signature a checkpoint is
made with (and the refusal, before anything is written, to resume with other options), and the
log cut back to the epochs the checkpoint holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from inca.errors import IncaError
from inca.train import checkpoint
from inca.train.config import TrainConfig


def truncate_log(log: Path, epochs: int) -> None:
    """Keep the log's lines of the first ``epochs`` epochs (those the checkpoint holds)."""
    if log.exists():
        lines = log.read_text().splitlines()
        kept = [line for line in lines if json.loads(line)["epoch"] <= epochs]
        if len(kept) != len(lines):
            log.write_text("".join(line + "\n" for line in kept))


def signed(signature: dict[str, Any], config: TrainConfig) -> dict[str, Any]:
    """What a checkpoint is signed with, as JSON gives it back (tuples become lists)."""
    return json.loads(json.dumps(signature | {"train": config.signature()}))


def refuse_other_signature(out_dir: Path, saved: dict[str, Any], now: dict[str, Any]) -> None:
    if saved != now:
        raise IncaError(
            f"cannot resume {out_dir}: the run was started with other options "
            f"({'; '.join(differences(saved, now))}); use the same options or another --out"
        )


def differences(then: dict[str, Any], now: dict[str, Any], prefix: str = "") -> list[str]:
    """What differs, a level into nested options: ``train.metric: accuracy then,
    balanced-accuracy now`` for short values (what to pass to resume: a default that follows
    the data may have changed since), ``key differs`` for long ones."""
    out = []
    for key in sorted(set(then) | set(now)):
        a, b = then.get(key), now.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict) and not prefix:
            out += differences(a, b, f"{key}.")
        elif all(v is None or isinstance(v, str | int | float) for v in (a, b)):
            out.append(f"{prefix}{key}: {a} then, {b} now")
        else:
            out.append(f"{prefix}{key} differs")
    return out


def holds_checkpoint(out_dir: Path) -> bool:
    """Whether a run was trained in ``out_dir`` (one checkpoint, or a grid's shards)."""
    out_dir = Path(out_dir)
    return (out_dir / checkpoint.FILE).exists() or any(out_dir.glob("shards/rank*.safetensors"))


def check_resumable(
    out_dir: Path, signature: dict[str, Any], config: TrainConfig, rank: int | None = None
) -> None:
    """Refuse, before anything is written, to resume a checkpoint made with other options (a
    run without a checkpoint yet simply starts). ``rank``: the run's adapters are sharded over
    ranks (``--shard adapters``), this one's checkpoint is checked."""
    from inca.train.grid_shard import shard_file

    out_dir = Path(out_dir)
    grid_files = list(out_dir.glob("shards/rank*.safetensors"))
    if rank is None and grid_files:
        raise IncaError(
            f"cannot resume {out_dir}: it was trained with --shard adapters; resume it the same "
            "way, with as many processes"
        )
    if rank is not None and (out_dir / checkpoint.FILE).exists():
        raise IncaError(
            f"cannot resume {out_dir}: it was trained data-parallel; resume it without "
            "--shard adapters"
        )
    names = [checkpoint.FILE] if rank is None else [shard_file(rank), shard_file(rank, True)]
    for name in names:
        if (out_dir / name).exists():
            meta = checkpoint.read_meta(out_dir, name)
            refuse_other_signature(out_dir, meta.get("signature") or {}, signed(signature, config))
            return
