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
        diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        raise IncaError(
            f"cannot resume {out_dir}: the run was started with other options "
            f"({', '.join(diff)} differ); use the same options or another --out"
        )


def check_resumable(out_dir: Path, signature: dict[str, Any], config: TrainConfig) -> None:
    """Refuse, before anything is written, to resume a checkpoint made with other options (a
    run without a checkpoint yet simply starts)."""
    if (Path(out_dir) / checkpoint.FILE).exists():
        meta = checkpoint.read_meta(Path(out_dir))
        refuse_other_signature(
            Path(out_dir), meta.get("signature") or {}, signed(signature, config)
        )
