"""What ``GET /metrics`` says, in the Prometheus text format (version 0.0.4): requests by route
and status, images, batch sizes, queue depth per backbone and request latency."""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last: above every bucket (+Inf only)
        self.sum, self.count = 0.0, 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out, cumulative = [], 0
        for bound, n in zip(self.buckets, self.counts, strict=False):
            cumulative += n
            out.append(f'{name}_bucket{{le="{bound:g}"}} {cumulative}')
        out.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        out += [f"{name}_sum {self.sum:.6f}", f"{name}_count {self.count}"]
        return out


class Metrics:
    """Counters, gauges and histograms of one server (thread-safe: batches run in threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.images = 0
        self.pass_seconds = 0.0
        self.batch_sizes = Histogram(BATCH_BUCKETS)
        self.latency = Histogram(LATENCY_BUCKETS)
        self.depth: dict[str, int] = {}

    def request(self, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(route, status)] += 1
            self.latency.observe(seconds)

    def batch(self, size: int, seconds: float) -> None:
        with self._lock:
            self.images += size
            self.pass_seconds += seconds
            self.batch_sizes.observe(size)

    def queue_depth(self, backbone: str, waiting: int) -> None:
        with self._lock:
            self.depth[backbone] = waiting

    def render(self) -> str:
        with self._lock:
            lines = [
                "# HELP inca_requests_total HTTP requests by route and status.",
                "# TYPE inca_requests_total counter",
            ]
            for (route, status), n in sorted(self.requests.items()):
                lines.append(f'inca_requests_total{{route="{route}",status="{status}"}} {n}')
            lines += [
                "# HELP inca_images_total Images run through a backbone pass.",
                "# TYPE inca_images_total counter",
                f"inca_images_total {self.images}",
                "# HELP inca_pass_seconds_total Time spent in backbone passes (busy time).",
                "# TYPE inca_pass_seconds_total counter",
                f"inca_pass_seconds_total {self.pass_seconds:.6f}",
                "# HELP inca_batch_size Images per backbone pass.",
                "# TYPE inca_batch_size histogram",
                *self.batch_sizes.lines("inca_batch_size"),
                "# HELP inca_queue_depth Images waiting for their backbone pass.",
                "# TYPE inca_queue_depth gauge",
                *(f'inca_queue_depth{{backbone="{b}"}} {n}' for b, n in sorted(self.depth.items())),
                "# HELP inca_request_latency_seconds Time from request to reply.",
                "# TYPE inca_request_latency_seconds histogram",
                *self.latency.lines("inca_request_latency_seconds"),
            ]
        return "\n".join(lines) + "\n"
