"""Bad input from the command line: one clear line (``inca: error: ...``, exit 2) naming the
problem and the fix, before any work; never a traceback. Each case here once gave a traceback,
a silent wrong result, or an error only after all the training was done."""

from __future__ import annotations

import json

import pytest

from inca.cli import main
from inca.data import make_splits
from inca.errors import IncaError
from tests.test_data_sources import make_folder

TINY = ["--model", "tiny-vit", "--data", "digits", "--image-size", "32", "--train-size", "60",
        "--val-size", "30", "--test-size", "30", "--epochs", "1", "--batch-size", "20",
        "--workers", "0", "--no-progress", "--min-steps", "0", "--halving-epochs", "0"]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--plan", "inca taps=block.1 lr=fast"], "lr takes numbers"),
        (["--plan", "inca taps=block.1 lr=nan"], "finite number above 0"),
        (["--plan", "inca taps=block.1 lr=inf"], "finite number above 0"),
        (["--plan", "inca taps=block.1 lr=0"], "finite number above 0"),
        (["--plan", "inca taps=block.1 lr=-1e-3"], "finite number above 0"),
        (["--plan", "inca taps=block.1 wd=-0.1"], "finite number 0 or more"),
        (["--plan", "inca taps=block.1 queries=1.5"], "queries must be a whole number"),
        (["--plan", "inca taps=block.*[::0]"], "step 0"),
        (["--device", "tpu:7"], "unknown device|inca runs on cpu or cuda"),
        (["--image-size", "14000"], "beyond what inca supports"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, capsys, args, message) -> None:
    code = main(["train", *TINY, *args, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.startswith("inca: error:")
    import re

    assert re.search(message, err), err


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--seed", "-1", "must be 0 or more"),
        ("--image-size", "0", "must be 1 or more"),
        ("--max-ensemble", "0", "must be 1 or more"),
        ("--val-size", "1.0", "a fraction must be below 1"),
        ("--batch-size", "2.5", "a whole number is needed"),
    ],
)
def test_bad_numbers_are_refused_by_the_parser(capsys, flag, value, message) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["train", *TINY, flag, value])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_an_out_that_is_a_file_or_read_only_is_one_line(tmp_path, capsys) -> None:
    file = tmp_path / "file"
    file.write_text("mine")
    assert main(["train", *TINY, "--out", str(file)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("inca: error:") and "Traceback" not in err
    assert file.read_text() == "mine"
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code = main(["train", *TINY, "--out", str(locked / "run")])
    finally:
        locked.chmod(0o700)
    err = capsys.readouterr().err
    import os

    if os.geteuid() != 0:  # root may write anywhere
        assert code == 2 and "inca: error:" in err and "Traceback" not in err


@pytest.mark.integration  # trains: the full tier
def test_a_refused_resume_writes_nothing(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    plan = ["--plan", "inca taps=block.1 lr=1e-3"]
    assert main(["train", *TINY, *plan, "--out", str(out)]) == 0
    before = {f.name: f.read_bytes() for f in out.iterdir() if f.is_file() and f.name[0] != "."}
    code = main(["train", *TINY, "--plan", "inca taps=block.1 lr=3e-3", "--out", str(out),
                 "--resume"])  # fmt: skip
    assert code == 2 and "other options" in capsys.readouterr().err
    after = {f.name: f.read_bytes() for f in out.iterdir() if f.is_file() and f.name[0] != "."}
    assert after == before  # plan.json and run.json included


def test_degenerate_data_is_refused_or_warned_about(tmp_path, capsys) -> None:
    one = tmp_path / "one"
    make_folder(one, {"cat": 12})
    with pytest.raises(IncaError, match="two or more"):
        make_splits(f"imagefolder:{one}", val_size=2)
    few = tmp_path / "few"
    make_folder(few, {"cat": 12, "dog": 12, "eel": 12})
    with pytest.raises(IncaError, match="no training image"):
        make_splits(f"imagefolder:{few}", train_size=2, val_size=3)
    capsys.readouterr()
    make_splits(f"imagefolder:{few}", val_size=2)
    assert "validation split has 2 image(s)" in capsys.readouterr().err


@pytest.mark.integration  # trains: the full tier
def test_results_json_is_strict_json(tmp_path) -> None:
    out = tmp_path / "run"
    assert main(["train", *TINY, "--plan", "linear taps=block.1", "--out", str(out)]) == 0
    json.loads((out / "results.json").read_text(), parse_constant=pytest.fail)
