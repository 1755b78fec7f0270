"""Predicting image files: folders expanded, bad files named, one backbone pass per batch, the
CSV of ``inca predict`` on folders."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import inca
from inca.adapters import adapter_config, build_adapter
from inca.cli import main
from inca.data import ImageTransform
from inca.errors import IncaError
from inca.tasks import MultiTask, Task
from inca.tasks.predict_images import (
    csv_header,
    format_predictions,
    image_files,
    predict_images,
    write_predictions_csv,
)


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


# ------------------------------------------------------------------ the CSV
CLASSES = {"pets": ["cat", "dog"], "weather": ["sunny", "rainy", "foggy"]}
HEADER = ["path", "pets:class", "pets:p:cat", "pets:p:dog"] + [
    "weather:class",
    "weather:p:sunny",
    "weather:p:rainy",
    "weather:p:foggy",
]


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        lines = list(csv.reader(f))
    return lines[0], [dict(zip(lines[0], line, strict=True)) for line in lines[1:]]


def check_rows(rows: list[dict[str, str]], tasks=("pets", "weather")) -> None:
    """Every task: probabilities of all classes that sum to 1, the class their argmax."""
    for row in rows:
        for t in tasks:
            probs = [float(row[f"{t}:p:{c}"]) for c in CLASSES[t]]
            assert sum(probs) == pytest.approx(1.0, abs=1e-5)
            assert row[f"{t}:class"] == CLASSES[t][int(np.argmax(probs))]


def test_csv_has_a_row_per_image_with_every_class_probability(served, folder, tmp_path) -> None:
    assert csv_header(served) == HEADER
    rows = predict_images(served, [folder], batch_size=2)
    out = tmp_path / "out" / "preds.csv"
    assert write_predictions_csv(out, rows, served, relative_to=folder) == 5
    header, lines = read_csv(out)
    assert header == HEADER
    assert [r["path"] for r in lines] == ["0.png", "1.png", "2.png", "3.png", "sub/grey.png"]
    check_rows(lines)
    for line, row in zip(lines, rows, strict=True):
        for t, pred in row["predictions"].items():
            assert line[f"{t}:class"] == pred["label"]
            assert [float(line[f"{t}:p:{c}"]) for c in CLASSES[t]] == pytest.approx(
                pred["probs"], abs=1e-5
            )
            assert pred["probs"][pred["index"]] == pred["prob"]
    assert [p.name for p in out.parent.iterdir()] == ["preds.csv"]  # no temporary left


@pytest.fixture(scope="module")
def task_dirs(served, tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("tasks")
    return [str(served.tasks[n].save(root / n)) for n in ("pets", "weather")]


def predict(*argv) -> int:
    """``inca predict ARGV``, quiet, fp32 on the CPU: its exit status."""
    options = ["--no-progress", "--precision", "fp32", "--device", "cpu"]
    return main(["predict", *map(str, argv), *options])


def test_a_folder_writes_predictions_csv_here(
    served, task_dirs, folder, tmp_path, monkeypatch, capsys
) -> None:
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert predict(*task_dirs, folder) == 0
    out = capsys.readouterr()
    assert out.err == ""  # --no-progress: no bar
    assert out.out.strip() == (
        f"wrote {here / 'predictions.csv'}: 5 image(s) x 2 task(s) (pets, weather)"
    )
    header, lines = read_csv(here / "predictions.csv")
    assert header == HEADER
    assert [r["path"] for r in lines] == ["0.png", "1.png", "2.png", "3.png", "sub/grey.png"]
    check_rows(lines)
    expected = predict_images(served, [folder])  # several tasks in one pass == the library
    assert [r["pets:class"] for r in lines] == [r["predictions"]["pets"]["label"] for r in expected]
    # one task: the same columns, the task's name kept
    assert predict(task_dirs[1], folder) == 0
    header, weather = read_csv(here / "predictions.csv")
    assert header == ["path"] + HEADER[4:]
    assert [r["weather:class"] for r in weather] == [r["weather:class"] for r in lines]


def test_out_names_the_csv_and_paths_stay_as_given(
    task_dirs, folder, tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "runs" / "p.csv"
    assert predict(*task_dirs, folder / "1.png", folder / "sub", "--out", out) == 0
    assert f"wrote {out}:" in capsys.readouterr().out
    assert not (tmp_path / "predictions.csv").exists()
    _, lines = read_csv(out)
    assert [r["path"] for r in lines] == [str(folder / "1.png"), str(folder / "sub" / "grey.png")]
    check_rows(lines)
    assert predict(*task_dirs, folder, "--out", tmp_path) == 2  # a folder is no file name
    assert "is a folder; give a file name" in capsys.readouterr().err


def test_a_few_single_images_print_a_table(
    task_dirs, folder, tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    assert predict(*task_dirs, folder / "0.png", folder / "3.png") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["path", "pets", "prob", "weather", "prob"]
    assert [ln.split()[0] for ln in lines[1:]] == [str(folder / "0.png"), str(folder / "3.png")]
    assert not (tmp_path / "predictions.csv").exists()
    monkeypatch.setattr("inca.cli.predict.TABLE_MAX_IMAGES", 1)  # many single images: a CSV
    assert predict(*task_dirs, folder / "0.png", folder / "3.png") == 0
    assert capsys.readouterr().out.startswith(f"wrote {tmp_path / 'predictions.csv'}: 2 image(s)")


def test_the_progress_bar_counts_images_skipped_ones_too(served, folder, capsys) -> None:
    (folder / "sub" / "broken.png").write_bytes(b"this is not a png")
    skipped = []
    rows = predict_images(served, [folder], batch_size=4, progress=True, skipped=skipped)
    assert len(rows) == 5
    assert [e.path.name for e in skipped] == ["broken.png"]
    bar = capsys.readouterr().err
    assert "predict: 100%" in bar and "6/6" in bar


def test_unreadable_files_in_a_folder_are_skipped_and_listed(
    task_dirs, folder, tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    broken = folder / "sub" / "broken.png"
    broken.write_bytes(b"this is not a png")
    assert predict(*task_dirs, folder) == 0
    out = capsys.readouterr()
    assert out.err.startswith("inca: warning: skipped 1 unreadable image(s), no row for them:\n")
    assert f"  {broken}: cannot identify image file" in out.err
    assert out.out.strip().endswith(
        "5 image(s) x 2 task(s) (pets, weather); 1 unreadable image(s) skipped (no row)"
    )
    _, lines = read_csv(tmp_path / "predictions.csv")
    assert [r["path"] for r in lines] == ["0.png", "1.png", "2.png", "3.png", "sub/grey.png"]
    check_rows(lines)
    # a single image named on its own (a table): still an error that names it
    assert predict(*task_dirs, folder / "0.png", broken) == 2
    assert f"cannot read image {broken}" in capsys.readouterr().err


def test_nothing_readable_writes_no_csv_and_keeps_the_old_one(
    task_dirs, tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(3):
        (bad / f"{i}.jpg").write_bytes(b"truncated")
    (tmp_path / "predictions.csv").write_text("an earlier run\n")
    assert predict(*task_dirs, bad) == 2
    assert "none of the 3 images could be read" in capsys.readouterr().err
    assert (tmp_path / "predictions.csv").read_text() == "an earlier run\n"  # written atomically
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "predictions.csv"]
