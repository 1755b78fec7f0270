"""`inca bench-serve`: throughput and latency of ``inca serve`` under concurrent HTTP clients.

The server runs as users run it (``inca serve`` in its own process, uvicorn on 127.0.0.1); the
load comes from a real HTTP client (httpx, asyncio) sending a bounded number of one-image
requests from C concurrent clients. For T loaded tasks (1, 4, 16) and C clients (1, 8, 32):
images/s and p50/p95/p99 latency (at the most clients, and offline, the median of 3 runs: on a
small machine runs differ by 10-15%). Against it:

- the same tasks served one backbone pass per task (``--pass-per-task``): what sharing the
  pass buys;
- ``inca predict``'s offline images/s on the same images and tasks (batches of 32, no HTTP).

The tasks are InCA adapters with random weights on taps spread over the blocks, the deepest
block in every task set, so every count runs the backbone to the same depth: throughput does
not depend on what the adapters learned. Targets: 16 tasks at >= 80% of one task's images/s;
32 clients at >= 90% of the offline images/s.
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

from inca.recipes.data_options import DEFAULT_MODEL, MEASURED_IMAGE_SIZE
from inca.report.format import markdown_table
from inca.utils.io import write_json

TASKS_VS_ONE = 0.80  # 16 tasks at >= this share of one task's throughput
SERVED_VS_OFFLINE = 0.90  # 32 clients at >= this share of `inca predict`'s throughput
REPEATS = 3  # the points the targets compare are the median of this many runs
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


@contextlib.contextmanager
def server(tasks: list[Path], *flags: str):
    """A server for the benchmark (a deep queue, long timeouts); yields its URL."""
    proc, url = start_server(tasks, "--max-queue", "1024", "--timeout-s", "600", *flags)
    try:
        yield url
    finally:
        proc.terminate()
        proc.communicate(timeout=60)


async def load(url: str, images: list[bytes], clients: int, requests: int) -> dict[str, Any]:
    """``requests`` one-image requests from ``clients`` concurrent clients: images/s and
    latency percentiles (ms)."""
    import httpx

    latencies: list[float] = []
    counter = iter(range(requests))

    async def client(http: httpx.AsyncClient) -> None:
        for i in counter:
            start = time.perf_counter()
            reply = await http.post("/v1/predict", content=images[i % len(images)],
                                    headers=PNG)  # fmt: skip
            reply.raise_for_status()
            latencies.append(time.perf_counter() - start)

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        for _ in range(2):  # warm-up at the same concurrency: kernels, allocator, batching
            await asyncio.gather(*(http.post("/v1/predict", content=images[i], headers=PNG)
                                   for i in range(clients)))  # fmt: skip
        busy_before = await pass_seconds(http)
        start, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        busy = await pass_seconds(http) - busy_before
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "clients": clients,
        "requests": requests,
        "images_per_s": requests / wall,
        "p50_ms": 1e3 * q[49],
        "p95_ms": 1e3 * q[94],
        "p99_ms": 1e3 * q[98],
        # this client's own CPU, in cores: on a small machine it competes with the server
        "client_cpu_cores": cpu / wall,
        "server_busy_share": busy / wall,  # time in backbone passes / wall time
        "pass_ms_per_image": 1e3 * busy / requests,
    }


async def pass_seconds(http) -> float:  # noqa: ANN001
    """The server's time in backbone passes so far (its /metrics)."""
    text = (await http.get("/metrics")).text
    return float(next(x.split()[1] for x in text.splitlines()
                      if x.startswith("inca_pass_seconds_total")))  # fmt: skip


def measured(url: str, images: list[bytes], clients: int, requests: int, repeats: int) -> dict:
    """The load measurement of median throughput over ``repeats`` runs (all kept)."""
    runs = sorted((asyncio.run(load(url, images, clients, requests)) for _ in range(repeats)),
                  key=lambda m: m["images_per_s"])  # fmt: skip
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
) -> dict[str, Any]:
    task_counts = task_counts or [1, 4, 16]
    client_counts = client_counts or [1, 8, 32]
    images, most = test_images(64), max(client_counts)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as name:
        root = Path(name)
        every = make_tasks(model, image_size, max(task_counts), root / "tasks")
        for t in task_counts:
            tasks = every[:t]
            row = {"tasks": t, "offline_images_per_s": offline(tasks, images, requests, root)}
            print(f"{t} task(s): inca predict offline {row['offline_images_per_s']:.1f} img/s",
                  flush=True)  # fmt: skip
            with server(tasks) as url:
                row["shared"] = [measured(url, images, c, requests, REPEATS if c == most else 1)
                                 for c in client_counts]  # fmt: skip
            if t > 1:  # the baseline: one backbone pass per task, at the most clients
                with server(tasks, "--pass-per-task") as url:
                    row["pass_per_task"] = asyncio.run(
                        load(url, images, max(client_counts), max(8, requests // t))
                    )
            for m in row["shared"]:
                print(f"  {m['clients']:>2} clients: {m['images_per_s']:.1f} img/s, p50 "
                      f"{m['p50_ms']:.0f} / p95 {m['p95_ms']:.0f} / p99 {m['p99_ms']:.0f} ms; "
                      f"server in passes {100 * m['server_busy_share']:.0f}% of the time, "
                      f"{m['pass_ms_per_image']:.1f} ms/image; client "
                      f"{m['client_cpu_cores']:.2f} cores", flush=True)  # fmt: skip
            rows.append(row)
    res = summarise(rows, model, image_size, client_counts, requests)
    write_json(Path(out), res)
    print(serve_table(res))
    return res


def summarise(rows: list[dict], model: str, image_size: int, clients: list[int],
              requests: int) -> dict[str, Any]:  # fmt: skip
    def at(row: dict, c: int) -> float:
        return next(m["images_per_s"] for m in row["shared"] if m["clients"] == c)

    most = max(clients)
    one = next((r for r in rows if r["tasks"] == 1), rows[0])
    many = rows[-1]
    ratios = {
        f"{many['tasks']}_tasks_vs_1": at(many, most) / at(one, most),
        f"{most}_clients_vs_offline": at(one, most) / one["offline_images_per_s"],
    }
    return {
        "setup": {
            "model": model,
            "image_size": image_size,
            "requests": requests,
            "images_per_request": 1,
            "cpus": os.cpu_count(),
        },  # fmt: skip
        "rows": rows,
        "ratios": ratios,
        "targets": {
            f"{many['tasks']}_tasks_vs_1": TASKS_VS_ONE,
            f"{most}_clients_vs_offline": SERVED_VS_OFFLINE,
        },  # fmt: skip
        "met": {
            k: ratios[k] >= v
            for k, v in {
                f"{many['tasks']}_tasks_vs_1": TASKS_VS_ONE,
                f"{most}_clients_vs_offline": SERVED_VS_OFFLINE,
            }.items()
        },  # fmt: skip
    }


def serve_table(res: dict[str, Any]) -> str:
    header = ["tasks", "clients", "images/s", "p50 ms", "p95 ms", "p99 ms",
              "one pass per task (img/s)", "inca predict offline (img/s)"]  # fmt: skip
    rows = []
    for row in res["rows"]:
        base = row.get("pass_per_task")
        for m in row["shared"]:
            last = m is row["shared"][-1]
            per_task = f"{base['images_per_s']:.1f}" if base and last else ""
            off = f"{row['offline_images_per_s']:.1f}" if last else ""
            rows.append([row["tasks"], m["clients"], f"{m['images_per_s']:.1f}",
                         f"{m['p50_ms']:.0f}", f"{m['p95_ms']:.0f}", f"{m['p99_ms']:.0f}",
                         per_task, off])  # fmt: skip
    most = res["rows"][0]["shared"][-1]
    lines = [
        markdown_table(header, rows),
        "",
        f"At {most['clients']} clients and {res['rows'][0]['tasks']} task(s) the server "
        f"spent {100 * most['server_busy_share']:.0f}% of the time in backbone passes "
        f"({most['pass_ms_per_image']:.1f} ms per image; offline "
        f"{1e3 / res['rows'][0]['offline_images_per_s']:.1f} ms per image, decoding "
        f"included), while the load generator itself used "
        f"{most['client_cpu_cores']:.2f} of the machine's {res['setup']['cpus']} cores.",
    ]
    lines.append("")
    for k, v in res["ratios"].items():
        lines.append(f"- {k.replace('_', ' ')}: {v:.3f} (target >= {res['targets'][k]}: "
                     f"{'met' if res['met'][k] else 'NOT met'})")  # fmt: skip
    return "\n".join(lines)
