"""One writer per directory: a run, a comparison's method or a cache being built holds an
exclusive lock on its directory for as long as it writes there.

Two runs into one ``--out`` at once would otherwise both finish "successfully", the second
silently replacing the first's tasks while their logs interleave. The lock is ``flock`` on
``DIR/.inca.lock``: the kernel releases it when the holder exits, however it dies (kill -9
included), so a lock left by a dead process never blocks anyone, and nothing needs cleaning. The
file records the holder's pid, host and start time for the error message."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from inca.errors import IncaError
from inca.utils.distributed import on_main, world
from inca.utils.io import now_iso

LOCK_FILE = ".inca.lock"
_HELD: dict[Path, int] = {}  # directories this process holds -> depth (nested use is fine)


@contextlib.contextmanager
def exclusive(directory: str | os.PathLike, what: str = "run") -> Iterator[None]:
    """Hold ``directory`` (created if needed) for this process; another process holding it
    gets an error naming it (pid, host, since when) and how to go on."""
    directory = Path(directory).resolve()
    w = world()
    if w.distributed:  # rank 0 holds it for the whole job; the others learn whether it could
        with on_main_context(lambda: exclusive_local(directory, what)):
            yield
        return
    with exclusive_local(directory, what):
        yield


@contextlib.contextmanager
def on_main_context(make: Any) -> Iterator[None]:
    """Enter the context ``make()`` on rank 0 only; its refusal stops every rank."""
    holder: list[Any] = []

    def enter() -> None:
        cm = make()
        cm.__enter__()
        holder.append(cm)

    on_main(enter)
    try:
        yield
    finally:
        if holder:
            holder[0].__exit__(None, None, None)


@contextlib.contextmanager
def exclusive_local(directory: Path, what: str) -> Iterator[None]:
    """The lock itself, for this process."""
    if directory in _HELD:  # the same process, one level down (a method of a comparison)
        _HELD[directory] += 1
        try:
            yield
        finally:
            _HELD[directory] -= 1
        return
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise IncaError(
            f"cannot write to {directory} ({e.strerror}); choose another directory"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise IncaError(
            f"{directory} is in use by another inca process ({holder}); wait for it to finish, "
            f"or give this {what} another directory"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {now_iso()}".encode(), 0)
    _HELD[directory] = 1
    _remove_leftovers(directory)
    try:
        yield
    finally:
        del _HELD[directory]
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _remove_leftovers(directory: Path) -> None:
    """Temporary files of writes that were killed (``.NAME.*.tmp``, see ``inca.utils.io``): nothing
    else writes in a directory this process holds, so none of them is in flight."""
    import shutil

    for tmp in directory.rglob(".*.tmp"):
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
