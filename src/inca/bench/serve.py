"""`inca bench-serve`: throughput and latency of ``inca serve`` under concurrent HTTP clients.

The server runs as users run it (``inca serve`` in its own process, uvicorn on 127.0.0.1); the
load comes from C concurrent HTTP/1.1 keep-alive connections sending a bounded number of
one-image requests (a light asyncio client by default: on a small machine the load
generator's CPU is taken from the server; ``client="httpx"`` measures as before). For T loaded
tasks (1, 4, 16, 256) and C clients (1, 8, 32): images/s and p50/p95/p99 latency (at the most
clients, and offline, the median of 3 runs: on a small machine runs differ by 10-15%); where a
request's time goes (the server's per-stage times from its /metrics, the difference over each
run: read, decode, queue, pass, reply); the server's load time (start to ready) and resident
memory once loaded. Against it:

- the same tasks served one backbone pass per task (``--pass-per-task``, up to 16 tasks: at
  256 it would take many minutes): what sharing the pass buys;
- ``inca predict``'s offline images/s on the same images and tasks (batches of 32, no HTTP).

The tasks are InCA adapters with random weights on taps spread over the blocks, the deepest
block in every task set, so every count runs the backbone to the same depth: throughput does
not depend on what the adapters learned. Targets: every task count at >= 80% of one task's
images/s (256 tasks included); 32 clients at >= 90% of the offline images/s.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from inca.bench.serve_report import at, serve_table
from inca.recipes.data_options import DEFAULT_MODEL, MEASURED_IMAGE_SIZE
from inca.utils.io import write_json

TASKS_VS_ONE = 0.80  # T tasks at >= this share of one task's throughput
SERVED_VS_OFFLINE = 0.90  # 32 clients at >= this share of `inca predict`'s throughput
REPEATS = 3  # the points the targets compare are the median of this many runs
PASS_PER_TASK_UP_TO = 16  # the one-pass-per-task baseline beyond this would take minutes
PNG = {"content-type": "image/png"}  # one image per request, as the raw body


def make_tasks(model: str, image_size: int, count: int, root: Path) -> list[Path]:
    """``count`` InCA tasks on ``model``: task i reads block (last - i) mod depth."""
    import torch

    from inca.adapters import adapter_config, build_adapter
    from inca.backbones import load_backbone
    from inca.tasks import Task

    backbone = load_backbone(model, image_size=image_size)
    blocks = [t for t in backbone.taps if t.startswith("block.")]
    dirs = []
    for i in range(count):
        tap = blocks[-1 - i % len(blocks)]
        torch.manual_seed(i)
        adapter = build_adapter(adapter_config("inca"), backbone.taps[tap].dim, 10)
        task = Task.from_adapters(f"task{i:02d}", "inca", backbone, [str(c) for c in range(10)],
                                  [(f"task{i:02d}", tap, adapter)])  # fmt: skip
        dirs.append(task.save(root / f"task{i:02d}"))
    return dirs


def test_images(count: int) -> list[bytes]:
    """``count`` Fashion-MNIST test images as PNG files' bytes (digits where it is absent)."""
    from inca.data.sources import load_dataset

    try:
        data = load_dataset("fashion-mnist", "test")
    except Exception:  # noqa: BLE001  (a machine without the dataset: scikit-learn's digits)
        data = load_dataset("digits", "test")
    out = []
    for i in range(count):
        buf = io.BytesIO()
        data.load(i).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tasks: list[Path], *flags: str) -> tuple[subprocess.Popen, str]:
    """``inca serve TASKS FLAGS`` in its own process on 127.0.0.1 (a free port), once ready:
    the process (its output in ``stdout``) and its URL."""
    import httpx

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "inca", "serve", *map(str, tasks), "--port", str(port),
         "--log-level", "warning", *flags],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/readyz").status_code == 200:
                return proc, url
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"inca serve did not start: {proc.communicate()[0][-2000:]}")
        time.sleep(0.1)


def resident_mib(pid: int) -> float:
    """The resident memory of process ``pid`` (MiB)."""
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


@contextlib.contextmanager
def server(tasks: list[Path], *flags: str, info: dict[str, float] | None = None):
    """A server for the benchmark (deep queues, long timeouts); yields its URL. ``info`` gets
    ``load_s`` (from start to ready: imports, loading the tasks) and ``rss_mib`` (resident
    memory once ready)."""
    start = time.perf_counter()
    proc, url = start_server(tasks, "--max-queue", "1024", "--max-decoding", "1024",
                             "--timeout-s", "600", *flags)  # fmt: skip
    if info is not None:
        info["load_s"] = time.perf_counter() - start
        info["rss_mib"] = resident_mib(proc.pid)
    try:
        yield url
    finally:
        proc.terminate()
        proc.communicate(timeout=60)


class RawConnection:
    """One keep-alive HTTP/1.1 connection that POSTs one image as the raw body and reads the
    reply: a few lines of asyncio, ~0.1 ms of CPU per request where httpx took ~3 ms. On a
    2-core machine the load generator runs on the server's cores, so its CPU is taken from
    the pass being measured (httpx: 0.2-0.25 cores at 70-80 requests/s)."""

    def __init__(self, url: str) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self.host, self.port, self.netloc = parts.hostname, parts.port, parts.netloc
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, body: bytes) -> None:
        """POST /v1/predict; raises on any status but 200."""
        if self.streams is None:
            self.streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.streams
        head = (f"POST /v1/predict HTTP/1.1\r\nhost: {self.netloc}\r\ncontent-type: image/png"
                f"\r\ncontent-length: {len(body)}\r\n\r\n")  # fmt: skip
        writer.write(head.encode() + body)
        await writer.drain()
        status, length = await reader.readline(), 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        reply = await reader.readexactly(length)
        if status.split()[1:2] != [b"200"]:
            raise RuntimeError(f"the server answered {status.decode().strip()}: {reply[:500]!r}")

    async def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            with contextlib.suppress(ConnectionError):
                await self.streams[1].wait_closed()


async def load(url: str, images: list[bytes], clients: int, requests: int,
               client: str = "raw") -> dict[str, Any]:  # fmt: skip
    """``requests`` one-image requests from ``clients`` concurrent clients (each one keep-alive
    connection; ``client``: "raw" (``RawConnection``) or "httpx"): images/s, latency
    percentiles (ms), and the server's own figures over the run (its /metrics)."""
    import httpx

    latencies: list[float] = []
    counter = iter(range(requests))

    async with httpx.AsyncClient(base_url=url, timeout=600,
                                 limits=httpx.Limits(max_connections=clients)) as http:  # fmt: skip
        if client == "raw":
            connections = [RawConnection(url) for _ in range(clients)]
            posts = [c.post for c in connections]
        else:

            async def post(body: bytes) -> None:
                (await http.post("/v1/predict", content=body, headers=PNG)).raise_for_status()

            connections, posts = [], [post] * clients

        async def one_client(post: Any) -> None:
            for i in counter:
                start = time.perf_counter()
                await post(images[i % len(images)])
                latencies.append(time.perf_counter() - start)

        try:
            for _ in range(2):  # warm-up at the same concurrency: kernels, allocator, batching
                await asyncio.gather(*(p(images[i % len(images)]) for i, p in enumerate(posts)))
            before = await server_metrics(http)
            start, cpu = time.perf_counter(), time.process_time()
            await asyncio.gather(*(one_client(p) for p in posts))
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu
            after = await server_metrics(http)
        finally:
            await asyncio.gather(*(c.close() for c in connections))
    busy = after["pass_s"] - before["pass_s"]
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "clients": clients,
        "requests": requests,
        "images_per_s": requests / wall,
        "p50_ms": 1e3 * q[49],
        "p95_ms": 1e3 * q[94],
        "p99_ms": 1e3 * q[98],
        "client": client,
        # this client's own CPU, in cores: on a small machine it competes with the server
        "client_cpu_cores": cpu / wall,
        "server_busy_share": busy / wall,  # time in backbone passes / wall time
        "pass_ms_per_image": 1e3 * busy / requests,
        "mean_ms": 1e3 * statistics.fmean(latencies),
        "mean_batch": (after["batch_images"] - before["batch_images"])
        / max(1, after["batches"] - before["batches"]),
        # the server's mean ms per request in each stage (inca.serve.metrics.STAGES)
        "stages_ms": stage_means(before["stages"], after["stages"]),
    }


async def server_metrics(http) -> dict[str, Any]:  # noqa: ANN001
    """What the benchmark reads from the server's /metrics: seconds in backbone passes,
    passes and their images, per-stage sums and counts."""
    from inca.serve.metrics import stage_sums

    text = (await http.get("/metrics")).text

    def value(name: str) -> float:
        return float(next(x.split()[1] for x in text.splitlines() if x.startswith(name + " ")))

    return {"pass_s": value("inca_pass_seconds_total"), "batches": value("inca_batch_size_count"),
            "batch_images": value("inca_batch_size_sum"), "stages": stage_sums(text)}  # fmt: skip


def stage_means(before: dict[str, tuple[float, int]], after: dict[str, tuple[float, int]]
                ) -> dict[str, float]:  # fmt: skip
    """Mean ms per request of each stage over a run: the difference of the sums and counts."""
    out = {}
    for stage, (total, n) in after.items():
        total0, n0 = before.get(stage, (0.0, 0))
        if n > n0:
            out[stage] = 1e3 * (total - total0) / (n - n0)
    return out


def measured(url: str, images: list[bytes], clients: int, requests: int, repeats: int,
             client: str = "raw") -> dict:  # fmt: skip
    """The load measurement of median throughput over ``repeats`` runs (all kept)."""
    runs = sorted((asyncio.run(load(url, images, clients, requests, client))
                   for _ in range(repeats)), key=lambda m: m["images_per_s"])  # fmt: skip
    return runs[len(runs) // 2] | {"repeats": [m["images_per_s"] for m in runs]}


def offline(tasks: list[Path], images: list[bytes], requests: int, root: Path) -> float:
    """``inca predict``'s images/s on the same images and tasks (batches of 32)."""
    from inca.tasks import MultiTask
    from inca.tasks.predict_images import predict_images

    folder = root / "images"
    folder.mkdir(exist_ok=True)
    for i in range(requests):
        (folder / f"{i:04d}.png").write_bytes(images[i % len(images)])
    multi = MultiTask(tasks)
    predict_images(multi, [folder / "0000.png"] * 32, batch_size=32)  # warm-up
    seconds = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        predict_images(multi, [folder], batch_size=32)
        seconds.append(time.perf_counter() - start)
    return requests / statistics.median(seconds)


def run_serve_benchmark(
    model: str = DEFAULT_MODEL,
    image_size: int = MEASURED_IMAGE_SIZE,
    task_counts: list[int] | None = None,
    client_counts: list[int] | None = None,
    requests: int = 256,
    out: str | Path = "benchmarks/results/serve.json",
    server_flags: list[str] | None = None,
    client: str = "raw",
) -> dict[str, Any]:
    """Every task count x client count (see the module docstring); ``server_flags``: more
    ``inca serve`` flags for every server (to measure a setting); ``client``: the load
    generator, "raw" (a light asyncio HTTP/1.1 client) or "httpx" (as before: heavier)."""
    task_counts = sorted(set(task_counts or [1, 4, 16, 256]))
    client_counts = sorted(set(client_counts or [1, 8, 32]))
    flags = list(server_flags or [])
    images, most = test_images(64), max(client_counts)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as name:
        root = Path(name)
        every = make_tasks(model, image_size, max(task_counts), root / "tasks")
        for t in task_counts:
            tasks = every[:t]
            row: dict[str, Any] = {"tasks": t}
            row["offline_images_per_s"] = offline(tasks, images, requests, root)
            print(f"{t} task(s): inca predict offline {row['offline_images_per_s']:.1f} img/s",
                  flush=True)  # fmt: skip
            with server(tasks, *flags, info=row) as url:
                print(f"  server ready in {row['load_s']:.1f} s, {row['rss_mib']:.0f} MiB "
                      "resident", flush=True)  # fmt: skip
                row["shared"] = [measured(url, images, c, requests,
                                          REPEATS if c == most else 1, client)
                                 for c in client_counts]  # fmt: skip
            if 1 < t <= PASS_PER_TASK_UP_TO:  # the baseline: one pass per task, most clients
                with server(tasks, "--pass-per-task", *flags) as url:
                    row["pass_per_task"] = asyncio.run(
                        load(url, images, most, max(8, requests // t), client)
                    )
            for m in row["shared"]:
                print(f"  {m['clients']:>2} clients: {m['images_per_s']:.1f} img/s, p50 "
                      f"{m['p50_ms']:.0f} / p95 {m['p95_ms']:.0f} / p99 {m['p99_ms']:.0f} ms; "
                      f"server in passes {100 * m['server_busy_share']:.0f}% of the time, "
                      f"{m['pass_ms_per_image']:.1f} ms/image, mean batch "
                      f"{m['mean_batch']:.1f}; client {m['client_cpu_cores']:.2f} cores",
                      flush=True)  # fmt: skip
            rows.append(row)
    res = summarise(rows, model, image_size, client_counts, requests)
    res["setup"] |= {"server_flags": flags, "client": client}
    write_json(Path(out), res)
    print(serve_table(res))
    return res


def summarise(rows: list[dict], model: str, image_size: int, clients: list[int],
              requests: int) -> dict[str, Any]:  # fmt: skip
    """The rows, the ratios the targets compare (each task count vs one task, at the most
    clients; served vs offline) and, where measured, memory per task."""
    most = max(clients)
    one = next((r for r in rows if r["tasks"] == 1), rows[0])
    targets = {f"{r['tasks']}_tasks_vs_1": TASKS_VS_ONE for r in rows if r is not one}
    targets[f"{most}_clients_vs_offline"] = SERVED_VS_OFFLINE
    ratios = {f"{r['tasks']}_tasks_vs_1": at(r, most) / at(one, most)
              for r in rows if r is not one}  # fmt: skip
    ratios[f"{most}_clients_vs_offline"] = at(one, most) / one["offline_images_per_s"]
    res = {
        "setup": {
            "model": model,
            "image_size": image_size,
            "requests": requests,
            "images_per_request": 1,
            "cpus": os.cpu_count(),
        },  # fmt: skip
        "rows": rows,
        "ratios": ratios,
        "targets": targets,
        "met": {k: ratios[k] >= v for k, v in targets.items()},
    }
    if "rss_mib" in one:
        res["memory"] = {
            str(r["tasks"]): {"rss_mib": r["rss_mib"], "load_s": r["load_s"],
                              "mib_per_task": (r["rss_mib"] - one["rss_mib"]) / (r["tasks"] - 1)}
            for r in rows if r is not one
        }  # fmt: skip
    return res
