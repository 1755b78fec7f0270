"""What ``GET /metrics`` says, in the Prometheus text format (version 0.0.4): requests by route
and status, images, batch sizes, queue depth per backbone, request latency, and where a
request's time goes (``inca_stage_seconds{stage=...}``, one histogram per stage).

The stages of one ``/v1/predict`` request, in order (``STAGES``):
    read         its body read from the connection (and multipart parsed)
    decode_wait  waiting for a decode worker (the decode pool is busy with other requests)
    decode       decoding and preprocessing its images
    queue        waiting in its backbone's queue for a batch to take it
    pass         the whole backbone pass its images were in (it waits for all rows)
    compute      its share of that pass: pass seconds x its rows / the batch's rows
    reply        top-k of every task and the JSON body
``compute`` is a part of ``pass``, not a stage after it: the sum of the other six plus HTTP
parsing and sending is the latency. A request with parts in several passes (several
backbones, or more images than one batch) counts the longest wait and pass, and the sum of
its shares.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, *LATENCY_BUCKETS)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
STAGES = ("read", "decode_wait", "decode", "queue", "pass", "compute", "reply")


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last: above every bucket (+Inf only)
        self.sum, self.count = 0.0, 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        """The histogram's lines; ``labels`` (``stage="read"``) go before ``le``."""
        out, cumulative = [], 0
        pre, own = (f"{labels}," if labels else ""), (f"{{{labels}}}" if labels else "")
        for bound, n in zip(self.buckets, self.counts, strict=False):
            cumulative += n
            out.append(f'{name}_bucket{{{pre}le="{bound:g}"}} {cumulative}')
        out.append(f'{name}_bucket{{{pre}le="+Inf"}} {self.count}')
        out += [f"{name}_sum{own} {self.sum:.6f}", f"{name}_count{own} {self.count}"]
        return out


class Metrics:
    """Counters, gauges and histograms of one server (thread-safe: batches run in threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.images = 0
        self.view_images = 0
        self.pass_seconds = 0.0
        self.batch_sizes = Histogram(BATCH_BUCKETS)
        self.latency = Histogram(LATENCY_BUCKETS)
        self.depth: dict[str, int] = {}
        self.stages = {s: Histogram(STAGE_BUCKETS) for s in STAGES}
        self.decoding = 0  # images accepted for decoding, waiting or being decoded

    def request(self, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(route, status)] += 1
            self.latency.observe(seconds)

    def batch(self, size: int, seconds: float, view_images: int = 0) -> None:
        """A backbone pass of ``size`` requested images, plus ``view_images`` more for the
        tasks' test-time views."""
        with self._lock:
            self.view_images += view_images
            self.images += size
            self.pass_seconds += seconds
            self.batch_sizes.observe(size)

    def queue_depth(self, backbone: str, waiting: int) -> None:
        with self._lock:
            self.depth[backbone] = waiting

    def decode_depth(self, images: int) -> None:
        with self._lock:
            self.decoding = images

    def stage_times(self, seconds: dict[str, float]) -> None:
        """One answered request's time in each stage it went through ({stage: seconds})."""
        unknown = set(seconds) - set(STAGES)
        if unknown:
            raise ValueError(f"unknown stage(s) {sorted(unknown)}; the stages are {STAGES}")
        with self._lock:
            for stage, s in seconds.items():
                self.stages[stage].observe(s)

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
                "# HELP inca_view_images_total Extra images the backbone ran for test-time views.",
                "# TYPE inca_view_images_total counter",
                f"inca_view_images_total {self.view_images}",
                "# HELP inca_pass_seconds_total Time spent in backbone passes (busy time).",
                "# TYPE inca_pass_seconds_total counter",
                f"inca_pass_seconds_total {self.pass_seconds:.6f}",
                "# HELP inca_batch_size Images per backbone pass.",
                "# TYPE inca_batch_size histogram",
                *self.batch_sizes.lines("inca_batch_size"),
                "# HELP inca_queue_depth Images waiting for their backbone pass.",
                "# TYPE inca_queue_depth gauge",
                *(f'inca_queue_depth{{backbone="{b}"}} {n}' for b, n in sorted(self.depth.items())),
                "# HELP inca_decode_depth Images waiting for a decode worker or being decoded.",
                "# TYPE inca_decode_depth gauge",
                f"inca_decode_depth {self.decoding}",
                "# HELP inca_request_latency_seconds Time from request to reply.",
                "# TYPE inca_request_latency_seconds histogram",
                *self.latency.lines("inca_request_latency_seconds"),
                "# HELP inca_stage_seconds Time of answered predict requests in each stage.",
                "# TYPE inca_stage_seconds histogram",
            ]
            for stage in STAGES:
                lines += self.stages[stage].lines("inca_stage_seconds", f'stage="{stage}"')
        return "\n".join(lines) + "\n"


def stage_sums(text: str) -> dict[str, tuple[float, int]]:
    """{stage: (seconds summed, requests)} read back from ``render``'s text (for clients such
    as ``inca bench-serve``, which take the difference over a load run)."""
    out: dict[str, list[float]] = {}
    for line in text.splitlines():
        for suffix, slot in (("_sum{", 0), ("_count{", 1)):
            head = f"inca_stage_seconds{suffix}"
            if line.startswith(head):
                stage = line[len(head) :].split('"')[1]  # stage="read"} 1.25
                out.setdefault(stage, [0.0, 0])[slot] = float(line.rsplit(" ", 1)[1])
    return {s: (total, int(n)) for s, (total, n) in out.items()}
