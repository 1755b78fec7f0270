"""Files and data, hardened: high-bit-depth images keep their values, `inca eval` refuses data
that changed since training, killed writes leave no temporaries, saved files respect the umask,
corrupt validation images stop a run before training, and contradictory options are refused."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from inca.cli import main
from inca.data import load_dataset, make_splits
from inca.data.preprocess import to_8bit
from inca.errors import IncaError
from inca.utils.io import atomic_write, write_json
from inca.utils.run_lock import exclusive
from tests.test_data_sources import make_folder

TINY = ["--model", "tiny-vit", "--image-size", "32", "--epochs", "1", "--batch-size", "8",
        "--workers", "0", "--no-progress", "--min-steps", "0", "--halving-epochs", "0",
        "--plan", "linear taps=block.1"]  # fmt: skip


def test_16_bit_and_float_images_are_scaled_not_clipped(tmp_path) -> None:
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as img:
        got = np.asarray(to_8bit(img), dtype=np.float64)
    assert np.abs(got - ramp / 257).max() <= 0.5  # before: 74% of pixels clipped to 255
    floats = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    Image.fromarray(floats, mode="F").save(tmp_path / "float.tiff")
    with Image.open(tmp_path / "float.tiff") as img:
        got = np.asarray(to_8bit(img), dtype=np.float64)
    assert np.abs(got - floats * 255).max() <= 0.5  # before: black
    wild = Image.fromarray(np.full((8, 8), 1e6, dtype=np.float32), mode="F")
    with pytest.raises(IncaError, match="rescale it"):
        to_8bit(wild)


def test_a_16_bit_folder_loads_with_its_contrast(tmp_path) -> None:
    for cls, value in (("dark", 1000), ("light", 60000)):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(np.full((16, 16), value + i, np.uint16)).save(
                tmp_path / cls / f"{i}.png"
            )
    ds = load_dataset(f"imagefolder:{tmp_path}", "train")
    means = {ds.class_names[ds.labels[i]]: np.asarray(ds.load(i)).mean() for i in range(len(ds))}
    assert means["dark"] < 10 and 230 < means["light"] < 240


@pytest.mark.integration  # trains: the full tier
def test_eval_refuses_data_that_changed_and_finds_relative_data(tmp_path, monkeypatch, capsys):
    data = tmp_path / "photos"
    make_folder(data, {"cat": 10, "dog": 10})
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    args = [*TINY, "--data", "imagefolder:photos", "--val-size", "4", "--train-size", "8"]
    assert main(["train", *args, "--out", str(out)]) == 0
    monkeypatch.chdir(out)  # elsewhere: the relative path would miss (before: other data)
    assert main(["eval", str(out), "--no-progress"]) == 0
    make_folder(data, {"cat": 11})  # one more image: other data under the same name
    capsys.readouterr()
    assert main(["eval", str(out), "--no-progress"]) == 2
    assert "not the data task" in capsys.readouterr().err


@pytest.mark.integration  # trains: the full tier
def test_corrupt_val_images_stop_the_run_before_training(tmp_path, capsys) -> None:
    data = tmp_path / "photos"
    paths = make_folder(data, {"cat": 10, "dog": 10})
    splits = make_splits(f"imagefolder:{data}", val_size=4, train_size=8)
    bad = splits.val.dataset.paths[int(splits.val.indices[0])]
    bad.write_bytes(bad.read_bytes()[:40])  # truncated
    assert bad in paths
    code = main(["train", *TINY, "--data", f"imagefolder:{data}", "--val-size", "4",
                 "--train-size", "8", "--out", str(tmp_path / "run")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and str(bad) in err and "nothing was trained" in err
    assert not (tmp_path / "run" / "cache").exists()


def test_killed_writes_leave_nothing_once_the_directory_is_held(tmp_path) -> None:
    leftover = tmp_path / "tasks" / ".results.json.abc.tmp"
    leftover.parent.mkdir()
    leftover.write_text("half")
    with exclusive(tmp_path):
        assert not leftover.exists()


def test_saved_files_follow_the_umask(tmp_path) -> None:
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        with atomic_write(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644  # before: 0600
    assert (tmp_path / "b.bin").stat().st_mode & 0o777 == 0o644


def test_contradictory_cache_options_are_refused(tmp_path, capsys) -> None:
    code = main(["train", *TINY, "--data", "digits", "--cache-views", "3", "--no-augment",
                 "--out", str(tmp_path / "run")])  # fmt: skip
    assert code == 2 and "identical copies" in capsys.readouterr().err


@pytest.mark.integration  # trains: the full tier
def test_a_restart_after_deleting_the_checkpoint_starts_a_new_log(tmp_path) -> None:
    out = tmp_path / "run"
    args = [*TINY, "--data", "digits", "--train-size", "40", "--val-size", "20", "--test-size",
            "20", "--plan", "inca taps=block.1", "--out", str(out)]  # fmt: skip
    assert main(["train", *args]) == 0
    (out / "checkpoint.safetensors").unlink()
    assert main(["train", *args, "--resume"]) == 0
    assert len((out / "log.jsonl").read_text().splitlines()) == 1
