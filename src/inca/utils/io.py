"""Safe file writing: nothing already saved is lost when a write is interrupted."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def now_iso() -> str:
    """The time now, UTC, to the second: when a file says it was made."""
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="seconds")


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_private_dir_public(path: str | os.PathLike) -> None:
    """Give a directory made by ``tempfile.mkdtemp`` (0700) the mode the umask asks for, so a
    saved task is readable by whoever the user's files are (a server, a colleague)."""
    os.chmod(path, 0o777 & ~current_umask())


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's 0600 would hide it from others
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def json_safe(data: Any) -> Any:
    """``data`` with every NaN or infinite float replaced by None: JSON has no NaN, and a file
    with a bare ``NaN`` is unreadable to every strict parser (a diverged member's loss)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: json_safe(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [json_safe(v) for v in data]
    return data


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write JSON atomically (sorted keys, indented: diff-able; non-finite numbers as null)."""
    text = json.dumps(json_safe(data), indent=2, sort_keys=True, allow_nan=False)
    with atomic_write(path) as tmp:
        tmp.write_text(text + "\n")
