"""Processes: what one used (its peak memory, one reader for benchmarks and comparisons), and
``run_fresh``, the one way to run a function in a fresh Python process (own allocator, own
peak: a memory measurement of one mode must not include another's)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from inca.errors import IncaError

_RESULT = "@@inca-result@@ "  # marks the child's result line among whatever else it prints


def _status_mib(field: str) -> float | None:
    """A memory field of /proc/self/status (VmHWM, VmRSS) in MiB; None off Linux."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return None


def peak_rss_mib() -> float:
    """This process's resident high-water mark. (getrusage's ru_maxrss would inherit the peak of
    the process that forked this one; /proc's VmHWM belongs to this image alone.)"""
    peak = _status_mib("VmHWM")
    if peak is not None:
        return peak
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> None:
    """Start this process's high-water mark again from its current size (Linux: writing 5 to
    /proc/self/clear_refs), so methods run one after another in one process (a comparison
    under torchrun) each report their own peak. Elsewhere the peak simply keeps running."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def device_peak_mib(device: Any) -> float:
    """The peak of ``device`` since the last reset (MiB): CUDA's allocations on a GPU, the
    resident high-water mark on the CPU."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mib()


def reset_device_peak(device: Any) -> float:
    """Reset ``device``'s high-water mark; returns the memory in use now (MiB)."""
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    reset_peak_rss()
    return _status_mib("VmRSS") or peak_rss_mib()


def peak_memory() -> dict[str, float]:
    """This process's peak memory: resident (MiB), and on CUDA the accelerator's allocations."""
    import torch

    peak = {"peak_rss_mib": peak_rss_mib()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        peak["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return peak


def reset_peak_memory() -> None:
    import torch

    reset_peak_rss()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()


class FreshProcessError(IncaError):
    """A function run by :func:`run_fresh` failed; ``returncode`` and ``stderr`` (its tail,
    when captured) say how."""

    def __init__(self, target: str, returncode: int, stderr: str = "") -> None:
        self.returncode, self.stderr = returncode, stderr
        tail = f":\n{stderr[-2000:]}" if stderr else ""
        super().__init__(f"{target} failed in its own process (exit {returncode}){tail}")


def run_fresh(target: str, *args: Any, stream: bool = False) -> Any:
    """``module:function(*args)`` in a fresh Python process; its return value, through JSON
    (args must be JSON too). ``stream``: the child prints to this terminal as it goes (a long
    job); then nothing is returned, the function writes what it made itself."""
    code = (
        "import importlib, json, sys; m, f = sys.argv[1].split(':'); "
        "r = getattr(importlib.import_module(m), f)(*json.loads(sys.argv[2])); "
        + ("" if stream else f"print({_RESULT!r} + json.dumps(r), flush=True)")
    )  # a streamed child's output is the user's: no result line in it
    command = [sys.executable, "-c", code, target, json.dumps(list(args))]
    done = subprocess.run(command, capture_output=not stream, text=True)
    if done.returncode != 0:
        raise FreshProcessError(target, done.returncode, "" if stream else done.stderr)
    if stream:
        return None
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(_RESULT):
            return json.loads(line[len(_RESULT) :])
    raise FreshProcessError(target, 0, "it printed no result line")
