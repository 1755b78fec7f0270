"""The activation cache: exact contents, refusal of mismatches, damage detection, resumption,
and training from it equals training online."""

from __future__ import annotations

import json
from collections import namedtuple

import numpy as np
import pytest
import torch

import inca
from inca.adapters.base import stack_taps
from inca.cache import ActivationCache, build_cache, cache_request
from inca.cache.format import tap_file
from inca.data import ImageTransform, make_splits
from inca.errors import IncaError
from inca.train import TrainConfig, adapter_trainer, parse_plan

pytestmark = pytest.mark.integration  # trains end to end: the full tier

TAPS = ["block.1", "final"]


@pytest.fixture(scope="module")
def setup():
    backbone = inca.load_backbone("tiny-vit", precision="fp32")
    splits = make_splits("digits", train_size=120, val_size=60, test_size=60, seed=0)
    return backbone, splits


def build(setup, directory, **kw):
    backbone, splits = setup
    options = {"batch_size": 32, "workers": 0, "progress": False} | kw
    return build_cache(backbone, splits.train, TAPS, directory, **options)


def test_cache_holds_the_normalised_tokens(setup, tmp_path) -> None:
    backbone, splits = setup
    cache = ActivationCache(build(setup, tmp_path, dtype="float32"))
    positions = torch.tensor([5, 0, 77])
    got = cache.read(positions, TAPS)  # (n_taps, B, T, D)
    transform = ImageTransform(backbone.preprocess)
    ds, idx = splits.train.dataset, splits.train.indices
    pixels = torch.stack([transform(ds.load(int(idx[p]))) for p in positions])
    expected = stack_taps(backbone.forward_taps(pixels, TAPS), TAPS, normalize=True)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert cache.labels[positions].tolist() == splits.train.labels[positions.numpy()].tolist()
    header = json.loads((tmp_path / "header.json").read_text())
    assert header["complete"] and header["taps"] == {t: [17, 32] for t in TAPS}
    assert header["backbone"]["weights_hash"] == backbone.weights_hash

    half = ActivationCache(build(setup, tmp_path / "fp16", dtype="float16"))
    torch.testing.assert_close(half.read(positions, TAPS), got, rtol=2e-3, atol=2e-3)
    bf = ActivationCache(build(setup, tmp_path / "bf16", dtype="bfloat16"))
    torch.testing.assert_close(bf.read(positions, TAPS), got, rtol=1e-2, atol=2e-2)


def test_mismatched_requests_are_refused(setup, tmp_path) -> None:
    backbone, splits = setup
    cache = ActivationCache(build(setup, tmp_path))
    cache.check(cache_request(backbone, splits.train, ["final"], "float16", 1, False, 0))  # subset
    with pytest.raises(IncaError, match=r"taps \['block.3'\] are not cached"):
        cache.check(cache_request(backbone, splits.train, ["block.3"], "float16", 1, False, 0))
    with pytest.raises(IncaError, match="data.indices"):
        cache.check(cache_request(backbone, splits.val, TAPS, "float16", 1, False, 0))
    other = inca.load_backbone("tiny-vit", precision="fp32", image_size=48)
    with pytest.raises(IncaError, match="backbone.preprocess"):
        cache.check(cache_request(other, splits.train, TAPS, "float16", 1, False, 0))
    with pytest.raises(IncaError, match="already holds another activation cache"):
        build(setup, tmp_path, dtype="float32")


def test_truncated_and_corrupted_files_are_detected(setup, tmp_path) -> None:
    directory = build(setup, tmp_path)
    path = directory / tap_file("final")
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(IncaError, match="truncated or damaged"):
        ActivationCache(directory)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(flipped))
    with pytest.raises(IncaError, match="fails its checksum"):
        ActivationCache(directory)
    (directory / "header.json").write_text("{not json")
    with pytest.raises(IncaError, match="unreadable or corrupt"):
        ActivationCache(directory)


@pytest.mark.parametrize("views", [1, 2])  # 2: augmented (before: resumed rows differed)
def test_interrupted_extraction_resumes(setup, tmp_path, monkeypatch, views) -> None:
    backbone, _ = setup
    calls = {"n": 0}
    real = backbone.forward_taps

    def flaky(pixels, taps):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(pixels, taps)

    monkeypatch.setattr(backbone, "forward_taps", flaky)
    aug = {"views": views, "augment": views > 1}
    with pytest.raises(KeyboardInterrupt):
        build(setup, tmp_path / "a", dtype="float32", **aug)
    header = json.loads((tmp_path / "a" / "header.json").read_text())
    assert header["rows_done"] == 64 and not header["complete"]
    with pytest.raises(IncaError, match="incomplete"):
        ActivationCache(tmp_path / "a")
    monkeypatch.setattr(backbone, "forward_taps", real)
    resumed = ActivationCache(build(setup, tmp_path / "a", dtype="float32", **aug))
    fresh = ActivationCache(build(setup, tmp_path / "b", dtype="float32", **aug))
    everything = torch.arange(fresh.n)
    for view in range(views):
        torch.testing.assert_close(resumed.read(everything, TAPS, view=view).clone(),
                                   fresh.read(everything, TAPS, view=view).clone())  # fmt: skip


def test_disk_space_is_checked_first(setup, tmp_path, monkeypatch) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr("shutil.disk_usage", lambda p: usage(10**6, 10**6 - 1000, 1000))
    with pytest.raises(IncaError, match="GiB free"):
        build(setup, tmp_path)
    assert not (tmp_path / "header.json").exists()


def test_a_header_that_lies_or_lacks_a_key_is_refused(setup, tmp_path) -> None:
    """Before: a header whose dtype was edited read the tap files as another dtype, and a
    missing key or inconsistent rows gave a traceback."""
    build(setup, tmp_path)
    path = tmp_path / "header.json"
    good = json.loads(path.read_text())
    path.write_text(
        json.dumps(good | {"dtype": "float32" if good["dtype"] != "float32" else "float16"})
    )
    with pytest.raises(IncaError, match="changed or damaged"):
        ActivationCache(tmp_path)
    old = {k: v for k, v in good.items() if k != "header_crc32"}  # as older inca wrote it
    path.write_text(json.dumps(old))
    ActivationCache(tmp_path)  # still reads
    path.write_text(json.dumps({k: v for k, v in old.items() if k != "rows"}))
    with pytest.raises(IncaError, match="lacks rows"):
        ActivationCache(tmp_path)
    path.write_text(json.dumps(old | {"views": 7}))
    with pytest.raises(IncaError, match="inconsistent"):
        ActivationCache(tmp_path)


def test_a_disk_that_fills_is_an_error_not_a_sigbus(setup, tmp_path, monkeypatch) -> None:
    """The tap files are allocated before any row is written (before: sparse memmaps, and a
    disk that filled mid-build killed the process with SIGBUS)."""
    import errno
    import os

    def full(fd, offset, size):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(IncaError, match="cannot reserve .*No space left"):
        build(setup, tmp_path)


def test_tap_files_are_allocated_not_sparse(setup, tmp_path) -> None:
    cache = ActivationCache(build(setup, tmp_path))
    for tap in TAPS:
        file = next(tmp_path.glob(f"*{tap}*"))
        assert file.stat().st_blocks * 512 >= file.stat().st_size
    assert cache.n == 120


def test_augmented_views_differ(setup, tmp_path) -> None:
    cache = ActivationCache(build(setup, tmp_path, views=2, augment=True))
    assert cache.header["rows"] == 2 * cache.n
    a = cache.read(torch.arange(8), TAPS, view=0).clone()  # reads reuse one buffer
    b = cache.read(torch.arange(8), TAPS, view=1).clone()
    assert not torch.allclose(a, b)
    torch.testing.assert_close(cache.read(torch.arange(8), TAPS, view=2), a)  # views cycle
    with pytest.raises(IncaError, match="only different with augmentation"):
        build(setup, tmp_path / "x", views=2, augment=False)


@pytest.mark.parametrize("dtype, tol", [("float32", 1e-5), ("float16", 2e-2)])
def test_training_from_the_cache_equals_training_online(setup, tmp_path, dtype, tol) -> None:
    backbone, splits = setup
    plan = "inca taps=block.1,final lr=3e-3; linear taps=final lr=1e-2"
    specs = parse_plan(plan, list(backbone.taps))
    cfg = TrainConfig(epochs=2, batch_size=40, workers=0, progress=False, augment=False)
    online = adapter_trainer(backbone, splits, specs, cfg, tmp_path / "online", {})
    online.fit()
    caches = {}
    for split in ("train", "val", "test"):
        d = build_cache(
            backbone,
            getattr(splits, split),
            TAPS,
            tmp_path / "c" / split,
            dtype=dtype,
            workers=0,
            progress=False,
        )
        caches[split] = ActivationCache(d)
    cached = adapter_trainer(backbone, splits, specs, cfg, tmp_path / "cached", {}, caches)
    calls = {"n": 0}
    real = backbone.forward_taps
    backbone.forward_taps = lambda *a: calls.__setitem__("n", calls["n"] + 1) or real(*a)
    try:
        cached.fit()
    finally:
        del backbone.forward_taps
    assert calls["n"] == 0  # no backbone pass at all
    for name in online.members.names:
        a, b = online.members.member_state(name), cached.members.member_state(name)
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=tol, atol=tol, msg=f"{name}.{key}")
    if dtype == "float32":
        assert online.progress.best_acc == cached.progress.best_acc
    np.testing.assert_array_equal(cached.val_labels.numpy(), online.val_labels.numpy())


@pytest.mark.parametrize("dtype", ["float16", "float32", "bfloat16"])
def test_probe_features_over_many_cached_batches_are_each_batchs_own(setup, tmp_path, dtype):
    """The cache reads every batch into one reused buffer: features kept across batches must be
    copies. (The CLS feature of float32 tokens was a view of that buffer, so every batch's
    held the last batch's values: linear probes fitted on fp16 caches read as fp32 lost 1.5
    points on Fashion-MNIST before this test.)"""
    from inca.methods.linear import pool_tokens
    from inca.train.batch_sources import TokenSource
    from inca.train.probes import pooled_features

    backbone, splits = setup
    cache = ActivationCache(build(setup, tmp_path, dtype=dtype))
    cfg = TrainConfig(eval_batch_size=16, workers=0, progress=False)  # 120 images: 8 batches
    source = TokenSource(backbone, splits, TAPS, cfg, {"train": cache})
    feats, labels = pooled_features(source, "train", progress=False)
    for i, tap in enumerate(TAPS):
        for start in (0, 50, 110):
            x = cache.read(torch.arange(start, start + 5), TAPS, 0, source.token_dtype)[i]
            for pool, expected in pool_tokens(x, backbone.num_prefix_tokens).items():
                torch.testing.assert_close(feats[tap][pool][0, start : start + 5], expected)
