"""What a process used: its peak memory (a utility for benchmarks and comparisons)."""

from __future__ import annotations

from pathlib import Path


def peak_rss_mib() -> float:
    """This process's resident high-water mark. (getrusage's ru_maxrss would inherit the peak of
    the process that forked this one; /proc's VmHWM belongs to this image alone.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
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
