"""The HTTP app of ``inca serve`` (FastAPI; uvicorn runs it): many tasks behind one endpoint,
one backbone pass per micro-batch.

Routes (JSON unless said):
    GET  /                  a page to try the tasks in a browser (HTML)
    GET  /v1/tasks          every loaded task: name, classes, backbone, method, metrics
    POST /v1/predict        images as multipart files under ``file`` (repeatable), or one
                            image as the raw body; ``?tasks=a,b`` (default: all), ``?top_k=``
    GET  /healthz, /readyz  liveness; readiness (503 while draining at shutdown)
    GET  /metrics           Prometheus text
    POST /v1/tasks/{name}   load a task from a server-side directory ({"path": ...}), and
    DELETE /v1/tasks/{name} unload one: only with an admin token (otherwise they do not exist)

Errors are ``{"detail": message}`` with the status that fits: 400 not an image, 404 unknown
task, 413 over a size limit, 429 queue full (with Retry-After), 503 timed out or draining.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import time
from collections.abc import AsyncIterator, Sequence
from importlib import resources
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inca.errors import IncaError
from inca.serve.batcher import MicroBatcher, QueueFull, Waits
from inca.serve.config import ServeConfig
from inca.serve.images import Decoder, RequestError, decode_image
from inca.serve.metrics import Metrics
from inca.serve.pool import BackboneGroup, Ranked, TaskPool

RAW_TYPES = ("image/", "application/octet-stream")


class Server:
    """The app's state: the task pool, the decode pool, a batcher per backbone group, the
    metrics."""

    def __init__(self, pool: TaskPool, config: ServeConfig) -> None:
        self.pool, self.config, self.metrics = pool, config, Metrics()
        self.decoder = Decoder(config.decode_workers, config.max_decoding,
                               self.metrics.decode_depth)  # fmt: skip
        self.batchers: dict[int, MicroBatcher] = {}
        self.coming = 0  # predict requests being read or decoded: on their way to a queue
        self.draining = False

    def batcher(self, group: BackboneGroup) -> MicroBatcher:
        if id(group) not in self.batchers:
            c = self.config
            b = MicroBatcher(group, c.max_batch, c.max_wait_ms, c.max_queue, self.metrics,
                             c.pass_per_task, coming=lambda: self.coming)  # fmt: skip
            b.start()
            self.batchers[id(group)] = b
        return self.batchers[id(group)]

    def describe(self, name: str) -> dict[str, Any]:
        task = self.pool.task(name)
        infos = getattr(task, "backbone_infos", None) or [task.backbone_info]
        return {
            "name": name,
            "classes": list(task.class_names),
            "backbone": " + ".join(i["name"] for i in infos),
            "image_size": infos[0]["preprocess"]["image_size"],
            "backbones": [
                {"name": i["name"], "image_size": i["preprocess"]["image_size"]} for i in infos
            ],
            "method": task.method,
            "own_pass": bool(getattr(task, "own_pass", False)),
            "metrics": task.metrics,
            # test-time views: backbone images per requested image (the views' cost)
            "views": [getattr(p, "views", "none") for p in getattr(task, "parts", [task])],
            "backbone_images_per_image": sum(
                len(getattr(p, "view_set", (0,))) for p in getattr(task, "parts", [task])
            ),
        }

    async def close(self) -> None:
        self.draining = True
        await asyncio.gather(*(b.close() for b in self.batchers.values()))
        self.decoder.close()


class CountRequests:
    """Requests by route and status, and their latency to the last byte sent, in the metrics.

    A plain ASGI middleware: ``@app.middleware("http")`` (Starlette's BaseHTTPMiddleware) runs
    every request through extra tasks and streams, CPU taken from the backbone pass."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def sent(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sent)
        finally:  # the router put the matched route in the scope
            route = getattr(scope.get("route"), "path", "other")
            self.metrics.request(route, status, time.perf_counter() - start)


def set_pass_threads(threads: int | None) -> None:
    """torch's intra-op threads (process-wide), when the config names a number: on a small
    CPU, pass threads plus decode workers and the event loop should not outnumber the cores
    (a descheduled torch thread stalls the whole pass at its next barrier)."""
    if threads is not None and threads != torch.get_num_threads():
        torch.set_num_threads(threads)


def create_app(tasks: Sequence[Any], config: ServeConfig | None = None,
               device: str = "auto", precision: str = "auto") -> FastAPI:  # fmt: skip
    """The app serving ``tasks`` (loaded ``Task``/``FineTunedTask`` objects or directories)."""
    from inca.tasks import load_task

    config = config or ServeConfig()
    set_pass_threads(config.pass_threads)
    loaded = [t if hasattr(t, "class_names") else load_task(t) for t in tasks]
    server = Server(TaskPool(loaded, device, precision), config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for group in server.pool.groups:
            server.batcher(group)
        yield
        await server.close()  # uvicorn has let the requests in flight finish by now
        print("inca: stopped after answering every accepted request", flush=True)

    app = FastAPI(title="inca", version="1", lifespan=lifespan, docs_url="/docs")
    app.state.server = server

    @app.exception_handler(RequestError)
    async def request_error(request: Request, e: RequestError) -> JSONResponse:
        headers = {"Retry-After": "1"} if e.status == 429 else None
        return JSONResponse({"detail": str(e)}, status_code=e.status, headers=headers)

    app.add_middleware(CountRequests, metrics=server.metrics)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return resources.files("inca.serve").joinpath("page.html").read_text()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        if server.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        return JSONResponse({"status": "ready", "tasks": len(server.pool.names)})

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(server.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/tasks")
    async def list_tasks() -> dict[str, Any]:
        return {"tasks": [server.describe(n) for n in server.pool.names]}

    @app.post("/v1/predict")
    async def predict(request: Request, tasks: str | None = None, top_k: int | None = None
                      ) -> JSONResponse:  # fmt: skip
        return await answer(server, config, request, tasks, top_k)

    if config.admin_token:
        add_admin_routes(app, server)
    return app


def chosen_tasks(pool: TaskPool, text: str | None) -> list[str]:
    names = pool.names if not text else [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in pool.names]
    if unknown:
        raise RequestError(404, f"unknown task(s) {unknown}; loaded: {pool.names}")
    if not names:
        raise RequestError(404, "no task is loaded; load one (POST /v1/tasks/NAME)")
    return list(dict.fromkeys(names))


async def read_images(request: Request, config: ServeConfig) -> list[tuple[str, bytes]]:
    """(name, bytes) of each image of the request: multipart ``file`` fields, or the body."""
    length = int(request.headers.get("content-length") or 0)
    if length > config.max_images * config.max_image_bytes + 2**20:
        raise RequestError(413, f"request of {length:,} bytes is over the server's limits")
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        async with request.form(max_files=config.max_images + 1, max_fields=16) as form:
            uploads = [f for f in form.getlist("file") if hasattr(f, "read")]  # closed after
            if len(uploads) > config.max_images:
                raise RequestError(413, f"over {config.max_images} images in one request")
            files = [(f.filename or f"image{i}", await f.read()) for i, f in enumerate(uploads)]
    elif ctype.startswith(RAW_TYPES):
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > config.max_image_bytes:
                raise RequestError(413, f"image over the limit of {config.max_image_bytes:,} "
                                   "bytes; send a smaller file")  # fmt: skip
        files = [("body", bytes(body))]
    else:
        files = []
    if not files:
        raise RequestError(
            400, "no image in the request: send files as multipart form field 'file' "
            "(curl -F file=@cat.jpg), or one image as the body with an image/* content type"
        )  # fmt: skip
    return files


Batches = dict[BackboneGroup, tuple[torch.Tensor, list[str]]]


def groups_of(pool: TaskPool, names: list[str]) -> dict[BackboneGroup, list[str]]:
    """{backbone group: the tasks it runs for the chosen ones (a combined task's parts in
    theirs)}; 404 for a task unloaded since it was chosen."""
    by_group: dict[BackboneGroup, list[str]] = {}
    for n in names:
        try:
            for group, served, _ in pool.routes(n):
                by_group.setdefault(group, []).append(served)
        except KeyError:  # unloaded since the request came in
            raise RequestError(404, f"task {n!r} was unloaded; loaded: {pool.names}") from None
    return by_group


def prepare_image(groups: list[BackboneGroup], config: ServeConfig, name: str, data: bytes
                  ) -> list[torch.Tensor]:  # fmt: skip
    """One image decoded once and preprocessed for each group: [(3, S, S) per group] (in a
    decode worker). A transform's refusal (e.g. NaN pixels) is the client's 400."""
    img = decode_image(data, name, config.max_image_bytes, config.max_pixels)
    try:
        return [g.transform(img) for g in groups]
    except RequestError:
        raise
    except IncaError as e:
        raise RequestError(400, f"{name}: {e}") from None


async def prepare(server: Server, files: list[tuple[str, bytes]], names: list[str],
                  stages: dict[str, float]) -> Batches:  # fmt: skip
    """Every image decoded once, in the decode pool, and preprocessed for each backbone group
    a chosen task is on: {group: (pixels (n, 3, S, S), the chosen tasks of that group)}."""
    by_group = groups_of(server.pool, names)
    groups = list(by_group)
    work = functools.partial(prepare_image, groups, server.config)
    images, stages["decode_wait"], stages["decode"] = await server.decoder.run(work, files)
    return {g: (torch.stack([img[j] for img in images]), by_group[g])
            for j, g in enumerate(groups)}  # fmt: skip


def top(pool: TaskPool, name: str, ranked: Ranked, k: int) -> list[dict[str, Any]]:
    """The ``k`` likeliest classes of one image for task ``name``, ranked in the batch's thread
    (``Ranked``): here only a slice and the labels."""
    classes = pool.task(name).class_names
    return [{"label": classes[i], "index": i, "prob": p} for i, p in ranked.top(k)]


def add_admin_routes(app: FastAPI, server: Server) -> None:
    """Loading and unloading tasks while serving, for holders of the admin token."""
    from inca.tasks import load_task

    def authorize(request: Request) -> None:
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), server.config.admin_token.encode()):
            raise RequestError(401, "admin routes need 'Authorization: Bearer <admin token>'")

    @app.post("/v1/tasks/{name}", status_code=201)
    async def load(name: str, request: Request) -> dict[str, Any]:
        authorize(request)
        body = await request.json() if request.headers.get("content-length") else {}
        path = body.get("path") if isinstance(body, dict) else None
        if not isinstance(path, str):
            raise RequestError(400, 'send {"path": "/a/task/directory"} as the JSON body')
        if name in server.pool.names:
            raise RequestError(409, f"task {name!r} is loaded already; DELETE it first")
        try:
            task = await run_in_threadpool(load_task, path)
            task.name = name
            groups = await run_in_threadpool(server.pool.add, task)
        except IncaError as e:
            raise RequestError(400, str(e)) from None
        for group in groups:
            server.batcher(group)
        return server.describe(name)

    @app.delete("/v1/tasks/{name}")
    async def unload(name: str, request: Request) -> dict[str, Any]:
        authorize(request)
        if name not in server.pool.names:
            raise RequestError(404, f"unknown task {name!r}; loaded: {server.pool.names}")
        for emptied in server.pool.remove(name):  # a backbone serving nothing now: finish, stop
            batcher = server.batchers.pop(id(emptied))
            await batcher.close()
        return {"unloaded": name, "tasks": server.pool.names}


async def answer(
    server: Server, config: ServeConfig, request: Request, tasks: str | None, top_k: int | None
) -> JSONResponse:
    """One /v1/predict request: its images read, decoded in the decode pool, handed to each
    backbone group's micro-batcher; the top classes of every task asked for. The time of each
    stage goes to the metrics (``inca.serve.metrics``)."""
    start = time.perf_counter()
    if server.draining:
        raise RequestError(503, "the server is shutting down; retry on another instance")
    names = chosen_tasks(server.pool, tasks)
    k = top_k if top_k is not None else config.top_k
    if k < 1:
        raise RequestError(400, f"top_k must be at least 1, got {k}")
    stages: dict[str, float] = {}
    server.coming += 1
    try:
        files = await read_images(request, config)
        stages["read"] = time.perf_counter() - start
        rows = await prepare(server, files, names, stages)
    finally:
        server.coming -= 1
    waits = Waits()
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(server.batcher(g).submit(pixels, frozenset(ns), waits)
                             for g, (pixels, ns) in rows.items())),
            config.timeout_s,
        )  # fmt: skip
    except QueueFull as e:
        raise RequestError(429, f"too many images waiting ({e}); retry shortly") from None
    except TimeoutError:
        raise RequestError(
            503, f"no answer within {config.timeout_s:g} s (the server is overloaded); "
            "retry later"
        ) from None  # fmt: skip
    replied = time.perf_counter()
    stages |= {"queue": waits.queue, "pass": waits.pass_, "compute": waits.compute}
    reply = build_reply(server.pool, files, names, results, k, replied - start)
    stages["reply"] = time.perf_counter() - replied
    server.metrics.stage_times(stages)
    return reply


def build_reply(pool: TaskPool, files: list[tuple[str, bytes]], names: list[str],
                results: list[list[dict[str, Ranked]]], k: int, seconds: float
                ) -> JSONResponse:  # fmt: skip
    """The JSON reply: per image the top ``k`` classes of each task, from each group's rows
    (``results``: per group, per image {task: probabilities}). Serialised here, not by
    FastAPI's encoder, which walks every value of the reply again."""
    probs: list[dict[str, Ranked]] = [{} for _ in files]
    for part in results:
        for i, row in enumerate(part):
            probs[i] |= row
    for n in (n for n in names if n in pool.combined):  # its parts' answers, mixed
        try:
            routes = pool.routes(n)
        except KeyError:
            continue  # unloaded meanwhile: left out, as a plain task would be
        for p in probs:
            if all(served in p for _, served, _ in routes):
                p[n] = Ranked.mix([(w, p[served]) for _, served, w in routes])
    return JSONResponse({
        "predictions": [
            {"file": name, "tasks": {n: top(pool, n, p[n], k) for n in names if n in p}}
            for (name, _), p in zip(files, probs, strict=True)
        ],
        "tasks": names,
        "latency_ms": 1000 * seconds,
    })  # fmt: skip
