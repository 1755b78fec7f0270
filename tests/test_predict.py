"""Predicting image files: folders expanded, bad files named, one backbone pass per batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import inca
from inca.adapters import adapter_config, build_adapter
from inca.data import ImageTransform
from inca.errors import IncaError
from inca.predict import format_predictions, image_files, predict_images
from inca.tasks import MultiTask, Task


@pytest.fixture(scope="module")
def served() -> MultiTask:
    backbone = inca.load_backbone("tiny-dinov2", precision="fp32", device="cpu")
    torch.manual_seed(0)
    tasks = []
    for name, tap, kind, classes in [
        ("pets", "final", "inca", ["cat", "dog"]),
        ("weather", "block.1", "linear", ["sunny", "rainy", "foggy"]),
    ]:
        adapter = build_adapter(adapter_config(kind), 32, len(classes))
        with torch.no_grad():
            for p in adapter.parameters():
                p.normal_()
        tasks.append(Task.from_adapters(name, kind, backbone, classes, [(name, tap, adapter)]))
    return MultiTask(tasks, backbone=backbone)


@pytest.fixture
def folder(tmp_path) -> Path:
    """Five images of varied size and mode, one in a sub-folder, plus a non-image file."""
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(40, 30), (32, 32), (20, 50), (64, 48)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "sub").mkdir()
    grey = rng.integers(0, 256, (36, 36), dtype=np.uint8)
    Image.fromarray(grey, mode="L").save(tmp_path / "sub" / "grey.png")
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_folders_expand_to_sorted_image_files(folder) -> None:
    names = [p.relative_to(folder).as_posix() for p in image_files([folder])]
    assert names == ["0.png", "1.png", "2.png", "3.png", "sub/grey.png"]
    assert image_files([folder / "1.png", folder / "sub"]) == [
        folder / "1.png",
        folder / "sub/grey.png",
    ]


def test_rows_match_the_multitask_and_batches_share_a_pass(served, folder, monkeypatch) -> None:
    calls = []
    real = served.backbone.forward_taps
    monkeypatch.setattr(
        served.backbone, "forward_taps", lambda p, taps: calls.append(len(p)) or real(p, taps)
    )
    rows = predict_images(served, [folder], batch_size=2)
    assert calls == [2, 2, 1]  # one backbone pass per batch serves both tasks
    files = image_files([folder])
    assert [r["path"] for r in rows] == [str(f) for f in files]
    transform = ImageTransform(served.backbone.preprocess)
    images = []
    for f in files:
        with Image.open(f) as img:
            images.append(transform(img))
    pixels = torch.stack(images)
    expected = served.predict_proba(pixels)
    for i, row in enumerate(rows):
        assert list(row["predictions"]) == ["pets", "weather"]
        for name, pred in row["predictions"].items():
            probs = expected[name][i]
            k = int(probs.argmax())
            assert pred["index"] == k
            assert pred["label"] == served.tasks[name].class_names[k]
            assert pred["prob"] == pytest.approx(float(probs[k]), abs=1e-6)


def test_format_predictions_is_an_aligned_table(served, folder) -> None:
    rows = predict_images(served, [folder])
    text = format_predictions(rows, ["pets", "weather"])
    lines = text.splitlines()
    assert len(lines) == 1 + len(rows)
    assert lines[0].split() == ["path", "pets", "prob", "weather", "prob"]
    col = lines[0].index("pets")
    for line, row in zip(lines[1:], rows, strict=True):
        cells = line.split()
        assert cells[0] == row["path"]
        assert line[col:].startswith(row["predictions"]["pets"]["label"])
        assert cells[2] == f"{row['predictions']['pets']['prob']:.3f}"
        assert cells[3] == row["predictions"]["weather"]["label"]
    assert len({len(line) for line in lines[1:]}) == 1  # right-aligned last column
    assert format_predictions(rows) == text  # task names default to the rows'


def test_unreadable_and_missing_files_are_named(served, folder) -> None:
    (folder / "sub" / "broken.png").write_bytes(b"this is not a png")
    with pytest.raises(IncaError, match=r"cannot read image .*broken\.png"):
        predict_images(served, [folder])
    with pytest.raises(IncaError, match=r"missing\.jpg does not exist"):
        predict_images(served, [folder / "missing.jpg"])
    (folder / "empty").mkdir()
    with pytest.raises(IncaError, match="holds no image files"):
        predict_images(served, [folder / "empty"])
    with pytest.raises(IncaError, match="batch size must be at least 1"):
        predict_images(served, [folder], batch_size=0)
