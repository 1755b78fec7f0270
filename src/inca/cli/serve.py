"""`inca serve TASK_DIR...`: the tasks behind one HTTP endpoint (FastAPI under uvicorn), and
`inca bench-serve`: its throughput and latency under concurrent clients."""

from __future__ import annotations

import argparse
import os
import shlex

from inca.cli.options import positive_int
from inca.recipes.data_options import DEFAULT_MODEL, MEASURED_IMAGE_SIZE
from inca.serve.config import ServeConfig

DEFAULTS = ServeConfig()  # the flags' defaults are the config's: one place to change them


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve tasks over HTTP, one backbone pass per batch")
    p.add_argument("tasks", nargs="+", help="task directories (with task.json)")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    p.add_argument("--port", type=int, default=8080)
    p.add_argument(
        "--max-batch",
        type=positive_int,
        default=DEFAULTS.max_batch,
        help="most images in one backbone pass (default %(default)s)",
    )
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=DEFAULTS.max_wait_ms,
        help="how long a batch waits for the requests on their way to join it; a lone "
        "request under light load does not wait (default %(default)s)",
    )
    p.add_argument(
        "--max-queue",
        type=positive_int,
        default=DEFAULTS.max_queue,
        help="images waiting per backbone before requests get 429 (default %(default)s)",
    )
    p.add_argument(
        "--decode-workers",
        type=positive_int,
        default=DEFAULTS.decode_workers,
        help="threads decoding and resizing images beside the pass (default %(default)s)",
    )
    p.add_argument(
        "--max-decoding",
        type=positive_int,
        default=DEFAULTS.max_decoding,
        help="images waiting for a decode worker before requests get 429 (default %(default)s)",
    )
    p.add_argument(
        "--pass-threads",
        type=positive_int,
        default=DEFAULTS.pass_threads,
        help="torch threads for the backbone passes (default: torch's, one per core)",
    )
    p.add_argument("--max-images", type=positive_int, default=32, help="images per request")
    p.add_argument("--max-image-bytes", type=positive_int, default=20 * 2**20)
    p.add_argument("--max-pixels", type=positive_int, default=40_000_000)
    p.add_argument("--timeout-s", type=float, default=30.0, help="per request; 503 beyond")
    p.add_argument("--top-k", type=positive_int, default=3, help="labels per task in a reply")
    p.add_argument(
        "--admin-token",
        default=os.environ.get("INCA_ADMIN_TOKEN"),
        help="enables POST/DELETE /v1/tasks/NAME for holders of this token (default: "
        "$INCA_ADMIN_TOKEN; unset: those routes do not exist)",
    )
    p.add_argument(
        "--pass-per-task",
        action="store_true",
        help="every task on a pass of its own (the baseline, for benchmarks)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info"])
    p.set_defaults(func=run)

    p = sub.add_parser("bench-serve", help="the server's throughput and latency under load")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--image-size", type=positive_int, default=MEASURED_IMAGE_SIZE)
    p.add_argument(
        "--tasks",
        default="1,4,16,256",
        help="loaded task counts; each gets load time, memory and throughput (default %(default)s)",
    )
    p.add_argument("--clients", default="1,8,32", help="concurrent client counts")
    p.add_argument("--requests", type=positive_int, default=256, help="per measurement")
    p.add_argument(
        "--server-flags",
        default="",
        help="more `inca serve` flags for every server, e.g. '--decode-workers 2 --max-batch 64'",
    )
    p.add_argument(
        "--client",
        choices=["raw", "httpx"],
        default="raw",
        help="the load generator: a light asyncio HTTP/1.1 client (raw), or httpx, which "
        "takes ~3 ms of CPU per request from the server's cores (default %(default)s)",
    )
    p.add_argument("--out", default="benchmarks/results/serve.json")
    p.set_defaults(func=run_bench)


def config_of(args: argparse.Namespace) -> ServeConfig:
    return ServeConfig(
        max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
        decode_workers=args.decode_workers, max_decoding=args.max_decoding,
        pass_threads=args.pass_threads,
        max_images=args.max_images, max_image_bytes=args.max_image_bytes,
        max_pixels=args.max_pixels, timeout_s=args.timeout_s, top_k=args.top_k,
        admin_token=args.admin_token or None, pass_per_task=args.pass_per_task,
    )  # fmt: skip


def run(args: argparse.Namespace) -> None:
    import uvicorn

    from inca.serve import create_app

    app = create_app(args.tasks, config_of(args), device=args.device, precision=args.precision)
    print(f"inca: serving {len(args.tasks)} task(s) on http://{args.host}:{args.port}/")
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                timeout_graceful_shutdown=int(args.timeout_s) + 5)  # fmt: skip


def run_bench(args: argparse.Namespace) -> None:
    from inca.bench.serve import run_serve_benchmark

    run_serve_benchmark(
        model=args.model,
        image_size=args.image_size,
        task_counts=[int(x) for x in args.tasks.split(",")],
        client_counts=[int(x) for x in args.clients.split(",")],
        requests=args.requests,
        out=args.out,
        server_flags=shlex.split(args.server_flags),
        client=args.client,
    )
