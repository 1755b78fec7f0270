"""Exact views (rotations by 90 degrees, mirror images) and object crops: the views move pixels
and nothing else, a cache of views holds what the backbone gives each view, test-time views
average the same way in `inca eval`, `MultiTask` and `serve`, and a crop travels with its task."""

from __future__ import annotations

import io
from collections import namedtuple

import numpy as np
import pytest
import torch
from PIL import Image

import inca
from inca.adapters import adapter_config, build_adapter
from inca.adapters.base import stack_taps
from inca.cache import ActivationCache, build_cache
from inca.data import ImageTransform, make_splits
from inca.data.views import (
    VIEW_SETS,
    apply_view,
    expand_views,
    mean_over_views,
    random_views,
    union_views,
    views_of,
)
from inca.errors import IncaError
from inca.tasks import MultiTask, Task, load_task

TAPS = ["block.1", "final"]


def quarter_turn(image: list[list[float]]) -> list[list[float]]:
    """One counter-clockwise quarter turn of a square list of rows, index by index."""
    s = len(image)
    return [[image[j][s - 1 - i] for j in range(s)] for i in range(s)]


def mirror(image: list[list[float]]) -> list[list[float]]:
    return [row[::-1] for row in image]


def test_the_eight_views_are_exact_index_moves() -> None:
    """Each view is its quarter turns then a mirror, pixel for pixel, in every channel: no
    interpolation (values are moved, never mixed), and the eight are eight different images."""
    x = torch.randn(2, 3, 5, 5)
    seen = []
    for k in range(8):
        got = apply_view(x, k)
        for b in range(2):
            for c in range(3):
                want = x[b, c].tolist()
                for _ in range(k % 4):
                    want = quarter_turn(want)
                want = mirror(want) if k >= 4 else want
                assert got[b, c].tolist() == want, f"view {k}"
        assert torch.equal(got.flatten().sort().values, x.flatten().sort().values)
        seen.append(got)
    assert len({tuple(v.flatten().tolist()) for v in seen}) == 8
    assert torch.equal(apply_view(x, 0), x)
    with pytest.raises(ValueError, match="0..7"):
        apply_view(x, 8)


def test_the_views_match_pil_transposes_of_the_image() -> None:
    """An independent reference: PIL's ROTATE_90 (counter-clockwise) and FLIP_LEFT_RIGHT on the
    image, then the same preprocessing, give view k of the preprocessed tensor exactly (an
    image at the backbone's size: resampling rounds to uint8 in its own pixel order)."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    preprocess = inca.load_backbone("tiny-vit", precision="fp32").preprocess
    transform = ImageTransform(preprocess)
    x = transform(image)
    for k in range(8):
        ref = image
        for _ in range(k % 4):
            ref = ref.transpose(Image.Transpose.ROTATE_90)
        if k >= 4:
            ref = ref.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        assert torch.equal(apply_view(x, k), transform(ref)), f"view {k}"


def test_view_sets_expand_draw_and_average() -> None:
    assert views_of("dihedral") == tuple(range(8)) and VIEW_SETS["flip"] == (0, 4)
    with pytest.raises(IncaError, match="dihedral"):
        views_of("diagonal")
    x = torch.randn(3, 3, 4, 4)
    big = expand_views(x, views_of("dihedral"))  # (8 * 3, 3, 4, 4), view-major
    assert big.shape == (24, 3, 4, 4) and torch.equal(big[3 * 5 : 3 * 6], apply_view(x, 5))
    probs = torch.rand(24, 2)
    torch.testing.assert_close(mean_over_views(probs, tuple(range(8)), (0, 4)),
                               (probs[0:3] + probs[12:15]) / 2)  # fmt: skip
    torch.testing.assert_close(mean_over_views(probs, tuple(range(8)), tuple(range(8))),
                               probs.reshape(8, 3, 2).mean(0))  # fmt: skip
    assert union_views([(0, 4), (0, 1, 2, 3)]) == (0, 1, 2, 3, 4)
    many = torch.randn(64, 3, 4, 4)
    drawn = random_views(many, views_of("rot90"), torch.Generator().manual_seed(0))
    which = [next(k for k in range(4) if torch.equal(drawn[i], apply_view(many[i], k)))
             for i in range(64)]  # fmt: skip
    assert set(which) == {0, 1, 2, 3}  # each image in one of its views, all drawn


@pytest.fixture(scope="module")
def setup():
    backbone = inca.load_backbone("tiny-vit", precision="fp32")
    splits = make_splits("digits", train_size=40, val_size=20, test_size=20, seed=0)
    return backbone, splits


@pytest.mark.integration
def test_a_cache_of_views_holds_each_views_tokens(setup, tmp_path) -> None:
    backbone, splits = setup
    directory = build_cache(backbone, splits.train, TAPS, tmp_path, dtype="float32",
                            batch_size=16, workers=0, progress=False,
                            view_set="dihedral")  # fmt: skip
    cache = ActivationCache(directory)
    assert cache.view_set == "dihedral" and cache.views == 8
    assert cache.header["rows"] == 8 * cache.n and cache.header["view_set"] == "dihedral"
    positions = torch.tensor([3, 0, 39])
    transform = ImageTransform(backbone.preprocess)
    ds, idx = splits.train.dataset, splits.train.indices
    pixels = torch.stack([transform(ds.load(int(idx[p]))) for p in positions])
    for k in range(8):
        got = cache.read(positions, TAPS, view=k).clone()
        want = stack_taps(backbone.forward_taps(apply_view(pixels, k), TAPS), TAPS, normalize=True)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5, msg=f"view {k}")
    mixed = cache.read(positions, TAPS, view=np.array([2, 7, 0]))  # one view per row
    torch.testing.assert_close(mixed[:, 1], cache.read(positions[1:2], TAPS, view=7)[:, 0])
    with pytest.raises(IncaError, match="exact views"):
        build_cache(backbone, splits.train, TAPS, tmp_path / "x", views=2, augment=True,
                    view_set="flip", progress=False, workers=0)  # fmt: skip


@pytest.mark.integration
def test_training_with_views_from_the_cache_equals_training_online(setup, tmp_path) -> None:
    """Per-image training views drawn from the cache and applied to pixels online are the same
    draws; validation and test with test-time views average the same eight views."""
    from inca.cache.split_caches import open_caches
    from inca.train import TrainConfig, adapter_trainer, parse_plan

    backbone, splits = setup
    specs = parse_plan("inca taps=block.1,final lr=3e-3; linear taps=final lr=1e-2",
                       list(backbone.taps))  # fmt: skip
    cfg = TrainConfig(epochs=2, batch_size=20, workers=0, progress=False, augment=False,
                      views="dihedral", test_views=True)  # fmt: skip
    online = adapter_trainer(backbone, splits, specs, cfg, tmp_path / "online", {})
    online.fit()
    caches = open_caches(backbone, splits, TAPS, tmp_path / "c", 1, "float32", 16, 0, workers=0,
                         progress=False, view_set="dihedral", test_views=True)  # fmt: skip
    assert [caches[s].views for s in ("train", "val", "test")] == [8, 8, 8]
    cached = adapter_trainer(backbone, splits, specs, cfg, tmp_path / "cached", {}, caches)
    cached.fit()
    for name in online.members.names:
        a, b = online.members.member_state(name), cached.members.member_state(name)
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-4, msg=name)
    for one_view in (False, True):
        p_online, y = online.predict("test", one_view=one_view)
        p_cached, y2 = cached.predict("test", one_view=one_view)
        assert torch.equal(y, y2) and len(y) == 20
        for name in p_online:
            torch.testing.assert_close(p_cached[name], p_online[name], rtol=1e-4, atol=1e-4)


@pytest.mark.integration
def test_view_caches_that_the_disk_cannot_hold_are_refused_first(setup, tmp_path, monkeypatch):
    """The size of every split's views is checked before any image is extracted."""
    from inca.cache.split_caches import open_caches

    backbone, splits = setup
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr("shutil.disk_usage", lambda p: usage(10**9, 10**9 - 10**5, 10**5))
    with pytest.raises(IncaError, match=r"train 40 x 8 views, val 20 x 8 views.*GiB free"):
        open_caches(backbone, splits, TAPS, tmp_path / "c", 1, "float32", 16, 0, workers=0,
                    progress=False, view_set="dihedral", test_views=True)  # fmt: skip
    assert not (tmp_path / "c" / "train").exists()  # nothing started


def random_task(backbone, name: str, views: str = "none", seed: int = 0) -> Task:
    torch.manual_seed(seed)
    adapter = build_adapter(adapter_config("inca"), backbone.taps["final"].dim, 10)
    with torch.no_grad():
        for p in adapter.parameters():
            p.normal_()
    return Task.from_adapters(name, "inca", backbone, [str(i) for i in range(10)],
                              [(name, "final", adapter)], views=views)  # fmt: skip


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def served_probabilities(client, images: list[bytes], task: str) -> torch.Tensor:
    files = [("file", (f"{i}.png", b, "image/png")) for i, b in enumerate(images)]
    reply = client.post(f"/v1/predict?top_k=10&tasks={task}", files=files)
    assert reply.status_code == 200, reply.text
    out = torch.zeros(len(images), 10)
    for i, p in enumerate(reply.json()["predictions"]):
        for item in p["tasks"][task]:
            out[i, int(item["label"])] = item["prob"]
    return out


@pytest.mark.integration
def test_test_time_views_average_alike_in_eval_multitask_and_serve(setup, tmp_path) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from inca.serve import ServeConfig, create_app
    from inca.tasks.evaluate import _probabilities

    backbone, splits = setup
    random_task(backbone, "viewed", "dihedral").save(tmp_path / "viewed")
    random_task(backbone, "plain", "none").save(tmp_path / "plain")  # the same adapter
    viewed, plain = load_task(tmp_path / "viewed"), load_task(tmp_path / "plain")
    assert viewed.views == "dihedral" and viewed.view_set == tuple(range(8))
    multi = MultiTask([viewed, plain], backbone=backbone)
    subset = splits.test
    evaluated, _ = _probabilities(multi, subset, batch_size=8, progress=False, workers=0)

    transform = ImageTransform(backbone.preprocess)
    images = [subset.dataset.load(int(i)) for i in subset.indices[:6]]
    pixels = torch.stack([transform(im) for im in images])
    alone = torch.stack([multi.predict_proba(apply_view(pixels, k))["plain"] for k in range(8)])
    torch.testing.assert_close(evaluated["viewed"][:6], alone.mean(0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(evaluated["plain"][:6], alone[0], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(alone.mean(0), alone[0], atol=1e-3)  # the views change something

    app = create_app([tmp_path / "viewed", tmp_path / "plain"], ServeConfig(max_wait_ms=2),
                     device="cpu", precision="fp32")  # fmt: skip
    with TestClient(app) as client:
        encoded = [png_bytes(im) for im in images]
        torch.testing.assert_close(served_probabilities(client, encoded, "viewed"),
                                   evaluated["viewed"][:6], rtol=1e-3, atol=1e-4)  # fmt: skip
        torch.testing.assert_close(served_probabilities(client, encoded, "plain"),
                                   evaluated["plain"][:6], rtol=1e-3, atol=1e-4)  # fmt: skip
        tasks = {t["name"]: t for t in client.get("/v1/tasks").json()["tasks"]}
        assert tasks["viewed"]["views"] == ["dihedral"]
        assert tasks["viewed"]["backbone_images_per_image"] == 8
        metrics = client.get("/metrics").text
        counted = [ln for ln in metrics.splitlines() if ln.startswith("inca_view_images_total")]
        assert counted and float(counted[0].split()[-1]) >= 7 * 6  # the views' extra passes


@pytest.mark.integration
def test_a_crop_is_saved_with_the_task_and_applied_at_serve_time(tmp_path) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from inca.serve import ServeConfig, create_app

    cropped = inca.load_backbone("tiny-vit", precision="fp32", crop=0.5)
    whole = inca.load_backbone("tiny-vit", precision="fp32")
    random_task(cropped, "small").save(tmp_path / "small")
    task = load_task(tmp_path / "small")
    assert task.backbone_info["preprocess"]["crop"] == 0.5
    multi = MultiTask([task], device="cpu", precision="fp32")  # loads the backbone it names
    assert multi.backbone.preprocess.crop == 0.5
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)) for _ in range(3)]
    with_crop = torch.stack([ImageTransform(cropped.preprocess)(im) for im in images])
    without = torch.stack([ImageTransform(whole.preprocess)(im) for im in images])
    centre = [im.crop((14, 10, 42, 30)) for im in images]  # the middle half of each side
    reference = torch.stack([ImageTransform(whole.preprocess)(im) for im in centre])
    # the crop is the resampling's source box, so the filter reads past its edges: equal but
    # for the border pixels
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))
    assert (with_crop[inner] - reference[inner]).abs().mean() < 0.02
    assert (with_crop - without).abs().mean() > 0.1
    want = multi.predict_proba(with_crop)["small"]
    assert not torch.allclose(want, multi.predict_proba(without)["small"], atol=1e-3)
    app = create_app([tmp_path / "small"], ServeConfig(max_wait_ms=2), device="cpu",
                     precision="fp32")  # fmt: skip
    with TestClient(app) as client:
        got = served_probabilities(client, [png_bytes(im) for im in images], "small")
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)


def test_without_views_or_crop_the_files_are_as_before(tmp_path) -> None:
    """Views and crops off (the defaults): cache requests, preprocessing and task files hold no
    new field, so caches and tasks made before them still match and load."""
    from inca.cache import cache_request

    backbone = inca.load_backbone("tiny-vit", precision="fp32")
    splits = make_splits("digits", train_size=20, val_size=10, test_size=10, seed=0)
    request = cache_request(backbone, splits.train, TAPS, "float16", 1, False, 0)
    assert "view_set" not in request and "crop" not in request["backbone"]["preprocess"]
    assert request == cache_request(backbone, splits.train, TAPS, "float16", 1, False, 0, "none")
    random_task(backbone, "plain").save(tmp_path / "plain")
    text = (tmp_path / "plain" / "task.json").read_text()
    assert '"views"' not in text and '"crop"' not in text
    assert load_task(tmp_path / "plain").view_set == (0,)


def test_inca_cache_builds_the_view_sets_train_reads(tmp_path) -> None:
    from inca.cli import main

    main(["cache", "--model", "tiny-vit", "--data", "digits", "--out", str(tmp_path),
          "--train-size", "20", "--val-size", "10", "--test-size", "10", "--views", "flip",
          "--test-views", "--taps", "final", "--no-progress", "--workers", "0"])  # fmt: skip
    assert [ActivationCache(tmp_path / s).views for s in ("train", "val", "test")] == [2, 2, 2]
    assert ActivationCache(tmp_path / "val").view_set == "flip"
    with pytest.raises(SystemExit):
        main(["cache", "--out", str(tmp_path / "x"), "--views", "sideways"])
