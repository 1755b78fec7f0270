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
