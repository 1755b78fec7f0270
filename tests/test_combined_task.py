"""A task whose members read two backbones (`CombinedTask`): saved and reloaded it predicts what
its parts predict, mixed by its weights; served, each part runs in its backbone's group beside
the other tasks there, and the reply is that same mixture; damaged files are refused."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

import inca
from inca.adapters import adapter_config, build_adapter
from inca.data import ImageTransform
from inca.errors import IncaError
from inca.tasks import CombinedTask, MultiTask, Task, load_task

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from inca.serve import ServeConfig, create_app  # noqa: E402

CLASSES = ["cat", "dog", "bird"]
TOKEN = "admin-token"


def random_task(backbone, name: str, taps: list[str], seed: int, weights=None) -> Task:
    torch.manual_seed(seed)
    members = []
    for i, tap in enumerate(taps):
        kind = "inca" if i % 2 == 0 else "linear"
        adapter = build_adapter(adapter_config(kind), backbone.taps[tap].dim, len(CLASSES))
        with torch.no_grad():
            for p in adapter.parameters():
                p.normal_()
        members.append((f"{kind}.{tap}", tap, adapter))
    return Task.from_adapters(name, "ensemble", backbone, CLASSES, members, weights=weights)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("combined")
    dino = inca.load_backbone("tiny-dinov2", precision="fp32", device="cpu")
    vit = inca.load_backbone("tiny-vit", precision="fp32", device="cpu")
    both = CombinedTask(
        "both",
        [random_task(dino, "a", ["block.1", "final"], 0, weights=[3, 1]),
         random_task(vit, "b", ["block.2"], 1)],
        [0.7, 0.3],
        metrics={"val_acc": 0.5},
    )  # fmt: skip
    both.save(root / "both")
    plain = random_task(dino, "plain", ["block.0"], 2)
    plain.name = "plain"
    plain.save(root / "plain")
    return {"dino": dino, "vit": vit, "root": root, "both": both}


def image(seed: int) -> tuple[bytes, Image.Image]:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue(), img


def by_hand(setup, task: CombinedTask, imgs: list[Image.Image]) -> torch.Tensor:
    """Each part alone on its own backbone's pixels, mixed by the weights: (B, C)."""
    out = 0
    for part, w, bb in zip(task.parts, task.weights, [setup["dino"], setup["vit"]], strict=True):
        x = torch.stack([ImageTransform(bb.preprocess)(i) for i in imgs])
        with torch.no_grad():
            out = out + w * part(bb.forward_taps(x, part.taps))
    return out


def test_saved_and_reloaded_it_predicts_its_parts_mixed(setup) -> None:
    loaded = load_task(setup["root"] / "both")
    assert isinstance(loaded, CombinedTask)
    assert loaded.weights == pytest.approx([0.7, 0.3])
    assert loaded.backbone_names == ["tiny-dinov2", "tiny-vit"]
    assert loaded.parts[0].member_weights == pytest.approx(
        {"inca.block.1": 0.75, "linear.final": 0.25}
    )
    imgs = [image(s)[1] for s in range(3)]
    pixels = [torch.stack([ImageTransform(bb.preprocess)(i) for i in imgs])
              for bb in (setup["dino"], setup["vit"])]  # fmt: skip
    got = loaded.predict_proba(pixels, [setup["dino"], setup["vit"]])
    want = by_hand(setup, setup["both"], imgs)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert torch.allclose(got.sum(-1), torch.ones(3))


def test_served_beside_other_tasks_it_gives_its_parts_mixed(setup) -> None:
    root = setup["root"]
    app = create_app([root / "both", root / "plain"], ServeConfig(top_k=3, max_wait_ms=1),
                     device="cpu", precision="fp32")  # fmt: skip
    raw = [image(s) for s in range(4)]
    with TestClient(app) as client:
        listed = {t["name"]: t for t in client.get("/v1/tasks").json()["tasks"]}
        assert list(listed) == ["both", "plain"]  # the parts are not tasks of their own
        assert listed["both"]["backbone"] == "tiny-dinov2 + tiny-vit"
        files = [("file", (f"{i}.png", data, "image/png")) for i, (data, _) in enumerate(raw)]
        reply = client.post("/v1/predict?tasks=both,plain", files=files).json()
    assert len(app.state.server.pool.groups) == 2  # plain and part 0 share tiny-dinov2's pass
    want = by_hand(setup, setup["both"], [img for _, img in raw])
    for i, pred in enumerate(reply["predictions"]):
        got = torch.zeros(3)
        for entry in pred["tasks"]["both"]:
            got[entry["index"]] = entry["prob"]
        torch.testing.assert_close(got, want[i], rtol=1e-5, atol=1e-5)
        assert pred["tasks"]["both"][0]["index"] == int(want[i].argmax())


def test_loaded_and_unloaded_while_serving(setup) -> None:
    root = setup["root"]
    config = ServeConfig(max_wait_ms=1, admin_token=TOKEN)
    app = create_app([root / "plain"], config, device="cpu", precision="fp32")
    auth = {"authorization": f"Bearer {TOKEN}"}
    with TestClient(app) as client:
        r = client.post("/v1/tasks/mix", json={"path": str(root / "both")}, headers=auth)
        assert r.status_code == 201 and r.json()["backbone"] == "tiny-dinov2 + tiny-vit"
        data, _ = image(7)
        png = {"content-type": "image/png"}
        r = client.post("/v1/predict?tasks=mix", content=data, headers=png)
        assert r.status_code == 200 and r.json()["tasks"] == ["mix"]
        assert client.delete("/v1/tasks/mix", headers=auth).json()["tasks"] == ["plain"]
        assert len(app.state.server.pool.groups) == 1  # tiny-vit's group closed with it
        assert client.post("/v1/predict?tasks=mix", content=data, headers=png).status_code == 404


def test_what_a_combined_task_refuses(setup) -> None:
    dino, both = setup["dino"], setup["both"]
    with pytest.raises(IncaError, match="two or more backbones"):
        CombinedTask("x", [both.parts[0]], [1.0])
    with pytest.raises(IncaError, match="same backbone"):
        CombinedTask("x", [both.parts[0], random_task(dino, "c", ["block.2"], 3)], [1, 1])
    other = random_task(setup["vit"], "d", ["block.2"], 4)
    other.class_names = ["x", "y", "z"]
    with pytest.raises(IncaError, match="same classes"):
        CombinedTask("x", [both.parts[0], other], [1, 1])
    with pytest.raises(IncaError, match="finite weight"):
        CombinedTask("x", list(both.parts), [1, float("nan")])
    with pytest.raises(IncaError, match="combines backbones"):
        MultiTask([both], backbone=dino)


def test_damaged_files_are_refused(setup, tmp_path) -> None:
    path = tmp_path / "both"
    setup["both"].save(path)
    record = json.loads((path / "task.json").read_text())
    for edit, message in [
        (lambda r: r["parts"][1].pop("weight"), "weight"),
        (lambda r: r["parts"].pop(), "fewer than two parts"),
        (lambda r: r["parts"][0]["backbone"].pop("weights_hash"), "backbone.weights_hash"),
        (lambda r: r["parts"][0]["members"][0].update(in_dim=7), "do not fit"),
    ]:
        damaged = json.loads(json.dumps(record))
        edit(damaged)
        (path / "task.json").write_text(json.dumps(damaged))
        with pytest.raises(IncaError, match=message):
            load_task(path)


def test_predicted_from_the_command_line_beside_a_task_on_one_backbone(setup, tmp_path) -> None:
    """`inca predict` runs each backbone once for every task on it, and mixes the parts."""
    import csv

    from inca.cli import main

    raw = [image(s) for s in range(3)]
    folder = tmp_path / "images"
    folder.mkdir()
    for i, (data, _) in enumerate(raw):
        (folder / f"{i}.png").write_bytes(data)
    out = tmp_path / "p.csv"
    root = setup["root"]
    args = ["predict", str(root / "both"), str(root / "plain"), str(folder), "--out", str(out),
            "--precision", "fp32", "--device", "cpu", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    with out.open() as f:
        rows = list(csv.DictReader(f))
    want = by_hand(setup, setup["both"], [img for _, img in raw])
    for i, row in enumerate(rows):
        got = torch.tensor([float(row[f"both:p:{c}"]) for c in CLASSES])
        torch.testing.assert_close(got, want[i], rtol=1e-5, atol=1e-5)
        assert row["both:class"] == CLASSES[int(want[i].argmax())]
        assert row["plain:class"] in CLASSES
