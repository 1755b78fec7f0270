"""The serving path beside the pass: the bounded decode pool (order kept, 429 beyond its limit,
one bad image failing its own request only), batches that follow the load, and the per-stage
times in /metrics and in ``inca bench-serve``'s report."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from inca.errors import IncaError  # noqa: E402
from inca.serve import ServeConfig, create_app  # noqa: E402
from inca.serve import app as app_module  # noqa: E402
from inca.serve.batcher import MicroBatcher  # noqa: E402
from inca.serve.images import Decoder, RequestError  # noqa: E402
from inca.serve.metrics import STAGES, Metrics, stage_sums  # noqa: E402
from tests.test_serve import expected, png, probabilities, task_dirs  # noqa: E402, F401

CLASSES = {"pets": ["cat", "dog"], "weather": ["sunny", "rainy", "foggy"]}


def files_of(images: list[bytes], names: list[str] | None = None) -> list[tuple]:
    names = names or [f"{i}.png" for i in range(len(images))]
    return [("file", (n, b, "image/png")) for n, b in zip(names, images, strict=True)]


def nan_tiff() -> bytes:
    """A float image of NaNs: it decodes, but preprocessing refuses it."""
    buf = io.BytesIO()
    Image.fromarray(np.full((12, 12), np.nan, dtype=np.float32), mode="F").save(buf, "TIFF")
    return buf.getvalue()


@pytest.fixture
def slow_decode(monkeypatch):
    """Decoding the image named ``<i>.png`` sleeps (8 - i) x 10 ms: with several workers the
    later images of a request finish first, so an order kept by accident shows."""
    real = app_module.prepare_image

    def slow(groups, config, name, data):
        index = int(name.split(".")[0]) if name[0].isdigit() else 0
        time.sleep(max(0, 8 - index % 8) * 0.01)
        return real(groups, config, name, data)

    monkeypatch.setattr(app_module, "prepare_image", slow)


def test_the_decoder_keeps_request_order_with_several_workers() -> None:
    """Jobs finish in reverse order; results come back in the request's order."""

    def work(name: str, data: bytes) -> str:
        time.sleep(0.01 * (5 - int(name)))
        return name + data.decode()

    async def main() -> None:
        decoder = Decoder(workers=3, max_images=8)
        files = [(str(i), f"-{i}".encode()) for i in range(5)]
        out, waited, seconds = await decoder.run(work, files)
        assert out == [f"{i}-{i}" for i in range(5)]
        assert waited >= 0 and seconds >= 0.1  # 0.05 + 0.04 + ... summed over the workers
        assert decoder.images == 0
        decoder.close()

    asyncio.run(main())


def test_images_keep_their_order_within_and_across_concurrent_requests(
    task_dirs,  # noqa: F811
    slow_decode,
) -> None:
    """8 concurrent requests of 1-4 images, decoded by 3 workers that finish later images first:
    every image gets exactly the probabilities it gets alone, under its own file name."""
    app = create_app([task_dirs[n] for n in CLASSES],
                     ServeConfig(decode_workers=3, max_images=4, max_wait_ms=20),
                     device="cpu", precision="fp32")  # fmt: skip
    requests = [[png(200 + 10 * r + i, (20 + i, 25 + r)) for i in range(1 + r % 4)]
                for r in range(8)]  # fmt: skip
    with TestClient(app) as client:

        def call(r: int) -> dict:
            reply = client.post("/v1/predict?top_k=10", files=files_of(requests[r]))
            assert reply.status_code == 200, reply.text
            return reply.json()

        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(call, range(8)))
    for images, reply in zip(requests, replies, strict=True):
        assert [p["file"] for p in reply["predictions"]] == [f"{i}.png" for i in range(len(images))]
        for i, image in enumerate(images):
            alone = expected(task_dirs, list(CLASSES), image)
            for task, names in CLASSES.items():
                got = probabilities(reply, i, task, names)
                torch.testing.assert_close(got, alone[task], atol=1e-5, rtol=1e-4)


def test_a_full_decode_pool_answers_429_at_once(task_dirs, monkeypatch) -> None:  # noqa: F811
    """With 3 images accepted for decoding (the limit) and the worker stuck, the next request
    is refused within a fraction of a second (429, Retry-After), not queued; once the worker
    is free the stuck request is answered and new ones are accepted again."""
    release, entered = threading.Event(), threading.Event()
    real = app_module.prepare_image

    def stuck(groups, config, name, data):
        entered.set()
        assert release.wait(10), "the test never released the decode worker"
        return real(groups, config, name, data)

    monkeypatch.setattr(app_module, "prepare_image", stuck)
    app = create_app([task_dirs["pets"]], ServeConfig(decode_workers=1, max_decoding=3,
                     max_images=3), device="cpu", precision="fp32")  # fmt: skip
    server = app.state.server
    with TestClient(app) as client, ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.post, "/v1/predict", files=files_of([png(1), png(2), png(3)]))
        assert entered.wait(10)
        assert server.decoder.images == 3
        start = time.perf_counter()
        refused = client.post("/v1/predict", files=files_of([png(4)]))
        assert time.perf_counter() - start < 1.0
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert "waiting to be decoded" in refused.json()["detail"]
        assert "--max-decoding" in refused.json()["detail"]
        release.set()
        assert first.result(timeout=30).status_code == 200
        assert server.decoder.images == 0
        assert client.post("/v1/predict", files=files_of([png(5)])).status_code == 200
        assert "inca_decode_depth 0" in client.get("/metrics").text


@pytest.mark.parametrize(
    ("bad", "status", "says"),
    [
        (b"not an image at all", 400, "1.png: not a readable image"),
        (nan_tiff(), 400, "1.png: image holds NaN"),  # decoded, refused by preprocessing
        (b"\x89PNG" + b"0" * 300_000, 413, "1.png: 300,004 bytes, over the limit"),
    ],
)  # fmt: skip
def test_one_bad_image_fails_its_own_request_only(
    task_dirs,  # noqa: F811
    slow_decode,
    bad,
    status,
    says,
) -> None:
    """A request with a good and a bad image gets the bad one's error while 6 concurrent good
    requests, decoded by the same workers and batched together, are all answered correctly."""
    app = create_app([task_dirs["pets"]],
                     ServeConfig(decode_workers=2, max_wait_ms=30, max_image_bytes=200_000),
                     device="cpu", precision="fp32")  # fmt: skip
    good = [png(300 + i) for i in range(6)]
    with TestClient(app) as client:

        def call(r: int):  # noqa: ANN202
            if r == 3:
                return client.post("/v1/predict", files=files_of([png(9), bad]))
            return client.post("/v1/predict?top_k=2", files=files_of([good[r - (r > 3)]]))

        with ThreadPoolExecutor(7) as pool:
            replies = list(pool.map(call, range(7)))
        metrics = client.get("/metrics").text
    failed = replies.pop(3)
    assert failed.status_code == status, failed.text
    assert says in failed.json()["detail"]
    for image, reply in zip(good, replies, strict=True):
        assert reply.status_code == 200, reply.text
        alone = expected(task_dirs, ["pets"], image)
        torch.testing.assert_close(probabilities(reply.json(), 0, "pets", CLASSES["pets"]),
                                   alone["pets"], atol=1e-5, rtol=1e-4)  # fmt: skip
    assert f'inca_requests_total{{route="/v1/predict",status="{status}"}} 1' in metrics
    assert 'inca_requests_total{route="/v1/predict",status="200"} 6' in metrics


def test_every_stage_is_timed_in_the_metrics(task_dirs) -> None:  # noqa: F811
    """Each answered predict request adds one observation to every stage's histogram; a
    refused one adds none; the times are consistent (its share of a pass <= the pass)."""
    app = create_app([task_dirs["pets"]], device="cpu", precision="fp32")
    with TestClient(app) as client:
        before = stage_sums(client.get("/metrics").text)
        assert all(n == 0 for _, n in before.values()) and set(before) == set(STAGES)
        for i in range(3):
            assert client.post("/v1/predict", files=files_of([png(i)])).status_code == 200
        assert client.post("/v1/predict", files=files_of([b"junk"])).status_code == 400
        text = client.get("/metrics").text
    assert "# TYPE inca_stage_seconds histogram" in text
    assert 'inca_stage_seconds_bucket{stage="decode",le="0.0001"}' in text
    assert 'inca_stage_seconds_bucket{stage="pass",le="+Inf"} 3' in text
    after = stage_sums(text)
    assert {s: n for s, (_, n) in after.items()} == dict.fromkeys(STAGES, 3)
    seconds = {s: total for s, (total, _) in after.items()}
    assert seconds["pass"] > 0 and seconds["decode"] > 0 and seconds["reply"] > 0
    assert seconds["compute"] <= seconds["pass"] + 1e-9


def test_unknown_stages_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown stage"):
        Metrics().stage_times({"decoding": 0.1})


class Echo:
    """A group whose "probabilities" are the pixels' first value; it records its batches."""

    name = "echo"
    view_images = 0  # backbone images beyond one per image (test-time views); none here

    def __init__(self) -> None:
        self.batches: list[int] = []

    def run(self, pixels, wanted, pass_per_task=False):
        self.batches.append(len(pixels))
        return [{t: pixels[i, 0, 0, :1] for t in w} for i, w in enumerate(wanted)]


def one_image(value: float) -> torch.Tensor:
    return torch.full((1, 3, 2, 2), value)


def test_a_lone_request_does_not_wait_for_the_window() -> None:
    """Light load: nothing else queued or on its way, so the batch goes at once, not after
    max_wait (1 s here)."""

    async def main() -> None:
        group = Echo()
        b = MicroBatcher(group, max_batch=8, max_wait_ms=1000, max_queue=64, metrics=Metrics())
        b.start()
        for k in range(3):
            start = time.perf_counter()
            out = await b.submit(one_image(k), frozenset({"t"}))
            assert time.perf_counter() - start < 0.3 and float(out[0]["t"]) == k
        assert group.batches == [1, 1, 1]
        await b.close()

    asyncio.run(main())


def test_a_batch_waits_for_images_on_their_way_and_a_deep_queue_goes_at_once() -> None:
    """Images on their way (``coming``) are waited for, within max_wait; a queue deeper than
    max_batch is taken at once, max_batch at a time, in arrival order."""

    async def main() -> None:
        coming = [1]
        group = Echo()
        b = MicroBatcher(group, max_batch=4, max_wait_ms=1000, max_queue=64, metrics=Metrics(),
                         coming=lambda: coming[0])  # fmt: skip
        b.start()
        first = asyncio.ensure_future(b.submit(one_image(0), frozenset({"t"})))
        await asyncio.sleep(0.1)
        assert group.batches == []  # waiting: one more image is on its way
        coming[0] = 0
        second = await b.submit(one_image(1), frozenset({"t"}))
        assert float((await first)[0]["t"]) == 0 and float(second[0]["t"]) == 1
        assert group.batches == [2]

        b.last_batch = 1  # light load again
        start = time.perf_counter()
        many = [asyncio.ensure_future(b.submit(one_image(k), frozenset({"t"})))
                for k in range(10)]  # fmt: skip
        first_eight = await asyncio.gather(*many[:8])
        assert time.perf_counter() - start < 0.5  # two full batches: no waiting
        assert [float(r[0]["t"]) for r in first_eight] == list(range(8))
        await asyncio.gather(*many[8:])  # the last 2 wait for more, up to max_wait
        assert group.batches == [2, 4, 4, 2]
        await b.close()

    asyncio.run(main())


def test_decode_limits_are_checked() -> None:
    with pytest.raises(IncaError, match="max_decoding .* below max_images"):
        ServeConfig(max_images=32, max_decoding=8)
    with pytest.raises(IncaError, match="decode_workers must be at least 1"):
        ServeConfig(decode_workers=0)
    with pytest.raises(IncaError, match="pass_threads must be at least 1"):
        ServeConfig(pass_threads=0)
    assert RequestError(429, "x").status == 429


def test_the_bench_report_reads_stage_times_memory_and_old_results() -> None:
    """``inca bench-serve``'s summary and table: ratios per task count, memory per task, the
    stage table; results in the older format (no stages, no memory) still print."""
    from inca.bench.serve import stage_means, summarise
    from inca.bench.serve_report import serve_table

    stages = {"read": 1.0, "decode": 2.0, "queue": 30.0, "pass": 60.0, "compute": 5.0, "reply": 1.0}

    def point(clients: int, rate: float) -> dict:
        return {"clients": clients, "requests": 64, "images_per_s": rate, "p50_ms": 10.0,
                "p95_ms": 20.0, "p99_ms": 30.0, "client_cpu_cores": 0.1,
                "server_busy_share": 0.9, "pass_ms_per_image": 20.0, "mean_ms": 100.0,
                "mean_batch": 12.0, "stages_ms": stages}  # fmt: skip

    rows = [{"tasks": t, "offline_images_per_s": 40.0, "load_s": 2.0 + t / 100,
             "rss_mib": 500.0 + t, "shared": [point(1, 10.0), point(32, rate)]}
            for t, rate in ((1, 36.0), (256, 27.0))]  # fmt: skip
    res = summarise(rows, "m", 112, [1, 32], 64)
    assert res["ratios"] == {"256_tasks_vs_1": 0.75, "32_clients_vs_offline": 0.9}
    assert res["met"] == {"256_tasks_vs_1": False, "32_clients_vs_offline": True}
    assert res["memory"]["256"]["mib_per_task"] == pytest.approx(1.0)
    table = serve_table(res)
    assert "Where a request's time goes" in table and "| 256 | 32 | 12.0 |" in table
    assert "| 1 | 32 | 12.0 | 1.0 | 0.0 | 2.0 | 30.0 | 60.0 | 5.0 | 1.0 | 6.0 | 100.0 |" in table
    assert "256 tasks vs 1: 0.750 (target >= 0.8: NOT met)" in table
    assert "| 256 | 4.6 | 756 | 1.00 | 27.0 | 0.750 |" in table
    for row in rows:  # the older format
        for key in ("load_s", "rss_mib"):
            row.pop(key)
        for m in row["shared"]:
            m.pop("stages_ms")
    old = summarise(rows, "m", 112, [1, 32], 64)
    assert "memory" not in old and "Where a request" not in serve_table(old)
    assert stage_means({"read": (1.0, 2)}, {"read": (1.5, 4), "pass": (0.0, 0)}) == {"read": 250.0}


def test_the_bench_load_generators_measure_a_live_server(task_dirs) -> None:  # noqa: F811
    """Both load generators of ``inca bench-serve`` against uvicorn on 127.0.0.1: every request
    answered and counted, the server's stage times read back; the light client refuses an
    error reply."""
    from inca.bench.serve import RawConnection, load
    from tests.test_serve_live import live

    app = create_app([task_dirs["pets"]], device="cpu", precision="fp32")
    images = [png(400 + i) for i in range(4)]
    with live(app) as url:
        for client in ("raw", "httpx"):
            m = asyncio.run(load(url, images, clients=3, requests=9, client=client))
            assert m["client"] == client and m["requests"] == 9 and m["images_per_s"] > 0
            assert set(m["stages_ms"]) == set(STAGES) and m["mean_batch"] >= 1
            assert m["stages_ms"]["pass"] >= m["stages_ms"]["compute"] > 0

        async def junk() -> None:
            connection = RawConnection(url)
            try:
                await connection.post(b"not an image")
            finally:
                await connection.close()

        with pytest.raises(RuntimeError, match="400"):
            asyncio.run(junk())


def test_ranked_rows_give_the_top_k_of_each_image() -> None:
    """Ranking a batch once per task gives each image's top-k as torch.topk does; equal
    probabilities keep the lower class first."""
    import torch

    from inca.serve.pool import Ranked

    probs = torch.rand(5, 7, generator=torch.Generator().manual_seed(0)).softmax(-1)
    probs[2] = 1 / 7  # a row of ties
    for row, ranked in zip(probs, Ranked.rows(probs), strict=True):
        values, index = row.topk(3)
        if len(set(row.tolist())) > 1:
            assert [i for i, _ in ranked.top(3)] == index.tolist()
        else:
            assert [i for i, _ in ranked.top(3)] == [0, 1, 2]
        assert [p for _, p in ranked.top(3)] == pytest.approx(values.tolist())
