"""A whole run through the CLI on a tiny model: the run directory holds what the issue lists."""

from __future__ import annotations

import json

import pytest

from inca.cli import main
from inca.tasks import load_task

pytestmark = pytest.mark.integration  # trains end to end: the full tier

ARGS = ["--model", "tiny-vit", "--data", "digits", "--image-size", "32", "--train-size", "200",
        "--val-size", "80", "--test-size", "100", "--epochs", "2", "--batch-size", "40",
        "--workers", "0", "--no-progress", "--min-steps", "0", "--halving-epochs", "0",
        "--plan", "inca taps=block.* lr=3e-3; linear taps=block.*[-2:] lr=1e-2"]  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", *ARGS, "--out", str(out)]) == 0
    return out


def test_run_directory_contents(run_dir) -> None:
    for name in [
        "plan.json",
        "run.json",
        "log.jsonl",
        "checkpoint.safetensors",
        "cache/train/header.json",  # the default: train from an activation cache in OUT/cache
        "results.json",
        "report.md",
        "accuracy_by_layer.png",
        "tasks/best/task.json",
        "tasks/ensemble/task.json",
    ]:
        assert (run_dir / name).is_file(), name
    results = json.loads((run_dir / "results.json").read_text())
    adapters = {a["name"]: a for a in results["adapters"]}
    assert len(adapters) == 4 + 2
    for a in adapters.values():
        assert {"tap", "kind", "params", "val_acc", "test_acc", "best_epoch"} <= a.keys()
    run = results["run"]
    assert run["epochs"] == 2 and run["stopped"] == "epoch cap" and len(run["curve"]) == 2
    assert run["cache"]["bytes"] > 0 and run["backbone_share_of_train_time"] == 0.0
    best = results["selection"]["best"]
    assert best["val_acc"] == max(a["val_acc"] for a in adapters.values())  # chosen on val
    ens = results["selection"]["ensemble"]
    assert ens["val_acc"] == max(row["val_acc"] for row in ens["k_curve"])
    assert ens["val_acc"] == max(ens["alternatives"].values())  # top-k and greedy both tried
    linear = [a for a in adapters.values() if a["kind"] == "linear"]
    assert results["reference"]["val_acc"] == max(a["val_acc"] for a in linear)


def test_run_json_holds_the_resolved_options(run_dir) -> None:
    from inca.recipes.run_options import RunOptions

    saved = json.loads((run_dir / "run.json").read_text())
    options = RunOptions.from_dict(saved)
    assert options.to_dict() == saved
    assert (options.model, options.image_size, options.train_size) == ("tiny-vit", 32, 200)
    assert options.train.epochs == 2 and options.train.augment is False  # as it ran: cached
    assert options.cache == str(run_dir / "cache")
    with pytest.raises(Exception, match="unknown field"):
        RunOptions.from_dict(saved | {"lrs": 1})


def test_saved_best_task_reproduces_its_test_accuracy(run_dir, capsys) -> None:
    results = json.loads((run_dir / "results.json").read_text())
    task = load_task(run_dir / "tasks" / "best")
    assert task.member_names == [results["selection"]["best"]["name"]]
    assert main(["eval", str(run_dir), "--no-progress"]) == 0
    out = capsys.readouterr().out
    best_pct = f"{100 * results['selection']['best']['test_acc']:.2f}%"
    line = next(ln for ln in out.splitlines() if task.name in ln)
    assert line.split()[1] == best_pct  # re-evaluated == saved


def test_existing_run_needs_resume(run_dir, capsys) -> None:
    assert main(["train", *ARGS, "--out", str(run_dir)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", *ARGS, "--out", str(run_dir), "--resume"]) == 0  # finished: no training
    assert "resuming" in capsys.readouterr().out


def test_cached_run_and_cache_command(tmp_path, capsys) -> None:
    cache_args = ["--model", "tiny-vit", "--data", "digits", "--image-size", "32",
                  "--train-size", "200", "--val-size", "80", "--test-size", "100",
                  "--workers", "0", "--no-progress"]  # fmt: skip
    assert main(["cache", *cache_args, "--out", str(tmp_path / "c"), "--views", "2"]) == 0
    out = capsys.readouterr().out
    assert "2 view(s), 4 taps" in out
    run = tmp_path / "run"
    assert main(["train", *ARGS, "--out", str(run), "--cache", str(tmp_path / "c"),
                 "--cache-views", "2"]) == 0  # fmt: skip
    results = json.loads((run / "results.json").read_text())
    assert results["run"]["backbone_share_of_train_time"] == 0.0  # no backbone pass
    # a cache built for other data is refused, saying what differs
    assert main(["train", *ARGS, "--train-size", "160", "--out", str(tmp_path / "r2"),
                 "--cache", str(tmp_path / "c"), "--cache-views", "2"]) == 2  # fmt: skip
    assert "does not match this run" in capsys.readouterr().err


def test_solved_probes_halving_and_seeds(tmp_path) -> None:
    """Linear probes fitted by L-BFGS join the SGD-trained adapters in selection; halving drops
    members that still come back for selection; --seeds repeats the run and reports mean ± std."""
    args = ["--model", "tiny-vit", "--data", "digits", "--image-size", "32",
            "--train-size", "200", "--val-size", "80", "--test-size", "100",
            "--batch-size", "40", "--workers", "0", "--no-progress", "--epochs", "4",
            "--min-steps", "0", "--halving-epochs", "1", "--halving-keep", "0.5",
            "--halving-min", "1", "--seeds", "2", "--out", str(tmp_path / "run"),
            "--plan", "inca taps=block.2,block.3 lr=3e-3,1e-2; "
                      "linear taps=block.3 pool=cls,cls+mean solver=lbfgs"]  # fmt: skip
    assert main(["train", *args]) == 0
    run = tmp_path / "run"
    results = json.loads((run / "results.json").read_text())
    adapters = {a["name"]: a for a in results["adapters"]}
    assert set(adapters) >= {"linear.block.3.poolcls", "linear.block.3.poolcls+mean"}
    assert all("l2" in adapters[n] for n in adapters if n.startswith("linear"))
    assert sum(1 for a in adapters.values() if "dropped_after" in a) == 3  # 4 -> 2 -> 1
    probes = json.loads((run / "probes.json").read_text())["probes"]
    assert len(probes["linear.block.3.poolcls"]["curve"]) > 3  # the L2 sweep
    seeds = results["seeds"]
    assert seeds["seeds"] == [0, 1] and len(seeds["best"]["test_acc"]["values"]) == 2
    assert (run / "seeds" / "seed1" / "results.json").is_file()
    assert "training seeds" in (run / "report.md").read_text()
    # a fitted probe, saved as a task, reproduces its test accuracy through the backbone
    ref = results["reference"]
    probe_task = load_task(run / "tasks" / "best")
    assert probe_task.member_names == [results["selection"]["best"]["name"]]
    assert ref["name"].startswith("linear.block.3")
