"""`inca serve`: the routes, every error, micro-batching that never mixes rows, tasks on two
backbones, admin loading, and the probabilities `MultiTask` gives each image alone."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

import inca  # noqa: E402
from inca.adapters import adapter_config, build_adapter  # noqa: E402
from inca.serve import ServeConfig, create_app  # noqa: E402
from inca.tasks import MultiTask, Task, load_task  # noqa: E402
from inca.tasks.finetuned import FineTunedTask  # noqa: E402

TOKEN = "s3cret-token"


def png(seed: int, size: tuple[int, int] = (40, 30), mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(buf, "PNG")
    return buf.getvalue()


def flat_png(size: tuple[int, int]) -> bytes:
    """A one-colour PNG: many pixels in few bytes."""
    buf = io.BytesIO()
    Image.new("RGB", size, (120, 30, 200)).save(buf, "PNG")
    return buf.getvalue()


def adapter_task(backbone, name: str, tap: str, kind: str, classes: list[str], seed: int) -> Task:
    torch.manual_seed(seed)
    width = backbone.taps[tap].dim
    adapter = build_adapter(adapter_config(kind), width, len(classes))
    with torch.no_grad():
        for p in adapter.parameters():
            p.normal_()
    return Task.from_adapters(name, kind, backbone, classes, [(name, tap, adapter)],
                              metrics={"val_acc": 0.5})  # fmt: skip


@pytest.fixture(scope="module")
def task_dirs(tmp_path_factory) -> dict[str, Path]:
    """pets, weather (adapters on tiny-dinov2), tuned (LoRA: its own pass) and digits (an
    adapter on another backbone, tiny-vit), saved as a user's task directories."""
    from inca.methods.pixel_config import build_model, finetune_config

    root = tmp_path_factory.mktemp("tasks")
    dino = inca.load_backbone("tiny-dinov2", precision="fp32", device="cpu")
    vit = inca.load_backbone("tiny-vit", precision="fp32", device="cpu")
    tasks = [
        adapter_task(dino, "pets", "final", "inca", ["cat", "dog"], 0),
        adapter_task(dino, "weather", "block.1", "linear", ["sunny", "rainy", "foggy"], 1),
        adapter_task(vit, "digits", "block.1", "inca", [str(i) for i in range(10)], 2),
    ]
    torch.manual_seed(3)
    lora = finetune_config("lora", lora_r=2)
    model = build_model(dino, 4, lora)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(std=0.5)
    tasks.append(FineTunedTask("tuned", "lora", dino.identity(), list("abcd"), lora,
                               model.changed_state()))  # fmt: skip
    out = {}
    for t in tasks:
        t.save(root / t.name)
        out[t.name] = root / t.name
    return out


@pytest.fixture(scope="module")
def client(task_dirs):
    app = create_app([task_dirs[n] for n in ("pets", "weather", "tuned")],
                     ServeConfig(max_wait_ms=2, max_images=4, max_image_bytes=200_000,
                                 max_pixels=500 * 500, admin_token=TOKEN),
                     device="cpu", precision="fp32")  # fmt: skip
    with TestClient(app) as c:
        yield c


def expected(task_dirs, names: list[str], image: bytes) -> dict[str, torch.Tensor]:
    """What `MultiTask.predict` gives this image alone, per task."""
    multi = MultiTask([load_task(task_dirs[n]) for n in names], device="cpu", precision="fp32")
    from inca.data import ImageTransform

    pixels = ImageTransform(multi.backbone.preprocess)(Image.open(io.BytesIO(image)))[None]
    return {n: p[0] for n, p in multi.predict_proba(pixels).items()}


def probabilities(reply: dict, i: int, task: str, classes: list[str]) -> torch.Tensor:
    out = torch.zeros(len(classes))
    for item in reply["predictions"][i]["tasks"][task]:
        out[classes.index(item["label"])] = item["prob"]
    return out


def test_tasks_are_listed_with_classes_backbone_and_metrics(client) -> None:
    tasks = {t["name"]: t for t in client.get("/v1/tasks").json()["tasks"]}
    assert set(tasks) == {"pets", "weather", "tuned"}
    assert tasks["weather"]["classes"] == ["sunny", "rainy", "foggy"]
    assert tasks["pets"]["backbone"] == "tiny-dinov2" and tasks["pets"]["metrics"]["val_acc"] == 0.5
    assert tasks["tuned"]["own_pass"] and not tasks["pets"]["own_pass"]


def test_predictions_are_what_the_multitask_gives_each_image_alone(client, task_dirs) -> None:
    images = [png(10), png(11, (20, 50)), png(12, (33, 33), "L")]
    files = [("file", (f"{i}.png", b, "image/png")) for i, b in enumerate(images)]
    reply = client.post("/v1/predict?top_k=10", files=files)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert [p["file"] for p in body["predictions"]] == ["0.png", "1.png", "2.png"]
    assert body["tasks"] == ["pets", "weather", "tuned"] and body["latency_ms"] > 0
    classes = {
        "pets": ["cat", "dog"],
        "weather": ["sunny", "rainy", "foggy"],
        "tuned": list("abcd"),
    }
    for i, image in enumerate(images):
        alone = expected(task_dirs, ["pets", "weather", "tuned"], image)
        for task, names in classes.items():
            got = probabilities(body, i, task, names)
            torch.testing.assert_close(got, alone[task], atol=1e-5, rtol=1e-4)
    top = client.post("/v1/predict?tasks=weather", files=files[:1]).json()  # default top 3
    assert list(top["predictions"][0]["tasks"]) == ["weather"]
    probs = [x["prob"] for x in top["predictions"][0]["tasks"]["weather"]]
    assert probs == sorted(probs, reverse=True) and len(probs) == 3


def test_a_raw_image_body_is_one_image(client) -> None:
    reply = client.post(
        "/v1/predict?tasks=pets", content=png(5), headers={"content-type": "image/png"}
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["predictions"][0]["file"] == "body"


@pytest.mark.parametrize(
    ("request_kwargs", "status", "says"),
    [
        ({"url": "/v1/predict?tasks=pets,nope"}, 404, "unknown task(s) ['nope']"),
        ({"files": [("file", ("a.png", b"not an image", "image/png"))]}, 400, "not a readable"),
        ({"files": [("file", ("a.png", b"", "image/png"))]}, 400, "empty file"),
        ({"data": {"x": "1"}}, 400, "no image in the request"),
        ({"files": [("file", ("big.png", b"0" * 200_001, "image/png"))]}, 413, "over the limit"),
        ({"files": [("file", ("wide.png", flat_png((600, 500)), "image/png"))]}, 413, "pixels"),
        ({"files": [("file", (f"{i}.png", png(i), "image/png")) for i in range(5)]}, 413,
         "over 4 images"),
        ({"url": "/v1/predict?top_k=0"}, 400, "top_k must be at least 1"),
    ],
)  # fmt: skip
def test_bad_requests_get_a_clear_json_error(client, request_kwargs, status, says) -> None:
    kwargs = {"url": "/v1/predict", "files": [("file", ("a.png", png(0), "image/png"))]}
    kwargs |= request_kwargs
    if "data" in request_kwargs:
        kwargs.pop("files")
    reply = client.post(**kwargs)
    assert reply.status_code == status, reply.text
    assert says in reply.json()["detail"]


def test_a_full_queue_is_429_with_retry_after_and_a_slow_batch_is_503(task_dirs, monkeypatch
                                                                         ) -> None:  # fmt: skip
    import time

    from inca.serve.pool import BackboneGroup

    app = create_app([task_dirs["pets"]], ServeConfig(max_queue=1, timeout_s=0.2),
                     device="cpu", precision="fp32")  # fmt: skip
    two = [("file", (f"{i}.png", png(i), "image/png")) for i in range(2)]
    with TestClient(app) as c:
        full = c.post("/v1/predict", files=two)
        assert full.status_code == 429 and full.headers["retry-after"] == "1"
        real_run = BackboneGroup.run
        monkeypatch.setattr(
            BackboneGroup, "run", lambda *a, **k: time.sleep(1) or real_run(*a, **k)
        )
        slow = c.post("/v1/predict", files=two[:1])
        assert slow.status_code == 503 and "no answer within 0.2 s" in slow.json()["detail"]
        monkeypatch.setattr(BackboneGroup, "run", real_run)
        time.sleep(1.1)  # the slow batch ends; its timed-out request is dropped
        assert c.post("/v1/predict", files=two[:1]).status_code == 200  # still serving


def test_health_readiness_and_prometheus_metrics(client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "tasks": 3}
    client.post("/v1/predict", files=[("file", ("a.png", png(0), "image/png"))])
    text = client.get("/metrics").text
    assert 'inca_requests_total{route="/v1/predict",status="200"}' in text
    for name in ("inca_images_total", "inca_batch_size_bucket", "inca_queue_depth",
                 "inca_request_latency_seconds_bucket"):  # fmt: skip
        assert name in text
    assert "# TYPE inca_request_latency_seconds histogram" in text


def test_the_page_is_served(client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/v1/predict" in page.text and "<script>" in page.text


def test_admin_routes_need_the_token_and_exist_only_with_one(client, task_dirs) -> None:
    body = {"path": str(task_dirs["digits"])}
    assert client.post("/v1/tasks/d", json=body).status_code == 401
    wrong = {"authorization": "Bearer nope-nope"}
    assert client.post("/v1/tasks/d", json=body, headers=wrong).status_code == 401
    auth = {"authorization": f"Bearer {TOKEN}"}
    loaded = client.post("/v1/tasks/d", json=body, headers=auth)  # another backbone: tiny-vit
    assert loaded.status_code == 201, loaded.text
    assert loaded.json()["backbone"] == "tiny-vit"
    assert client.post("/v1/tasks/d", json=body, headers=auth).status_code == 409
    both = client.post("/v1/predict?tasks=d,pets",
                       files=[("file", ("a.png", png(0), "image/png"))]).json()  # fmt: skip
    assert set(both["predictions"][0]["tasks"]) == {"d", "pets"}
    bad = client.post("/v1/tasks/e", json={"path": "/no/such/dir"}, headers=auth)
    assert bad.status_code == 400 and "/no/such/dir" in bad.json()["detail"]
    assert client.delete("/v1/tasks/d", headers=auth).json()["tasks"] == [
        "pets",
        "weather",
        "tuned",
    ]
    assert client.delete("/v1/tasks/d", headers=auth).status_code == 404

    app = create_app([task_dirs["pets"]], device="cpu", precision="fp32")  # no token
    with TestClient(app) as plain:
        assert plain.post("/v1/tasks/d", json=body).status_code in (404, 405)
        assert plain.delete("/v1/tasks/pets").status_code in (404, 405)


def test_the_batcher_splits_rows_back_and_never_mixes_requests() -> None:
    """Items of 1-3 rows from concurrent submitters share batches; each gets its own rows."""
    from inca.serve.batcher import MicroBatcher, QueueFull
    from inca.serve.metrics import Metrics

    class Echo:  # a group whose "probabilities" are the pixels' first value, per task
        name = "echo"
        batches: list[int] = []
        view_images = 0

        def run(self, pixels, wanted, pass_per_task=False):
            self.batches.append(len(pixels))
            return [{t: pixels[i, 0, 0, :1] for t in w} for i, w in enumerate(wanted)]

    async def main() -> None:
        b = MicroBatcher(Echo(), max_batch=8, max_wait_ms=20, max_queue=64, metrics=Metrics())
        b.start()

        async def one(k: int) -> None:
            rows = 1 + k % 3
            pixels = torch.full((rows, 3, 2, 2), float(k))
            pixels[:, 0, 0, 0] += torch.arange(rows) / 10
            tasks = frozenset({f"t{k % 2}"})
            out = await b.submit(pixels, tasks)
            assert [set(r) for r in out] == [set(tasks)] * rows
            assert [float(r[f"t{k % 2}"]) for r in out] == pytest.approx(
                [k + j / 10 for j in range(rows)])  # fmt: skip

        await asyncio.gather(*(one(k) for k in range(30)))
        assert max(Echo.batches) > 3 and max(Echo.batches) <= 8  # batched, within the cap
        b.max_queue = 2
        b.waiting = 2
        with pytest.raises(QueueFull):
            await b.submit(torch.zeros(1, 3, 2, 2), frozenset({"t0"}))
        b.waiting = 0
        await b.close()

    asyncio.run(main())
