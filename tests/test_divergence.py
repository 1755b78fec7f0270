"""A member whose training goes non-finite is found, named, and never selected or exported;
every JSON file stays valid JSON (no bare NaN)."""

from __future__ import annotations

import json

import pytest

from inca.cli import main
from inca.utils.io import json_safe, write_json

pytestmark = pytest.mark.integration  # spawns processes or trains: the full tier

ARGS = ["--model", "tiny-vit", "--data", "digits", "--image-size", "32", "--train-size", "120",
        "--val-size", "60", "--test-size", "60", "--epochs", "2", "--batch-size", "40",
        "--workers", "0", "--no-progress", "--min-steps", "0", "--halving-epochs", "0"]  # fmt: skip


def test_json_has_no_nan(tmp_path) -> None:
    assert json_safe({"a": float("nan"), "b": [1.0, float("inf")], "c": (2, "x")}) == {
        "a": None, "b": [1.0, None], "c": [2, "x"]}  # fmt: skip
    write_json(tmp_path / "x.json", {"loss": float("nan")})
    assert json.loads((tmp_path / "x.json").read_text()) == {"loss": None}


def test_a_diverged_member_is_warned_about_and_left_out(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    plan = "inca taps=block.1 lr=1e-3,1e38"  # the second overflows to inf, then NaN
    assert main(["train", *ARGS, "--plan", plan, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    bad = "inca.block.1.lr1e38"
    assert f"warning: {bad} diverged" in printed
    results = json.loads((out / "results.json").read_text())  # strict JSON: parses
    assert bad in results["run"]["diverged"]
    assert bad not in {a["name"] for a in results["adapters"]}
    assert results["selection"]["best"]["name"] == "inca.block.1.lr1e-3"
    assert bad not in results["selection"]["ensemble"]["members"]
    for line in (out / "log.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in log.jsonl"))
    task = json.loads((out / "tasks" / "ensemble" / "task.json").read_text())
    assert bad not in [m["name"] for m in task["members"]]


def test_every_member_diverged_is_an_error(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    code = main(["train", *ARGS, "--plan", "inca taps=block.1 lr=1e38", "--out", str(out)])
    assert code == 2 and "diverged" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["partial", "vqt"])  # separate runs; one shared pass
def test_a_diverged_rate_leaves_a_fine_tuning_sweep(tiny_setup, tmp_path, method) -> None:
    from inca.errors import DivergedError
    from inca.methods.pixel_config import finetune_config
    from inca.train import TrainConfig
    from inca.train.pixel_sweep import fine_tune_sweep

    backbone, splits = tiny_setup
    cfg = TrainConfig(epochs=1, batch_size=20, workers=0, progress=False, warmup=0.0)
    ft = finetune_config(method)
    trained = fine_tune_sweep(backbone, splits, ft, [1e-3, 1e38], cfg, tmp_path / "one")
    assert [r["config"]["lr"] for _, r in trained] == [1e-3]  # the diverged rate is left out
    with pytest.raises(DivergedError, match="diverged"):
        fine_tune_sweep(backbone, splits, ft, [1e37, 1e38], cfg, tmp_path / "all")
