"""`inca ensemble RUN_A RUN_B`: one selection over two runs' members on two backbones, from the
probabilities each run kept; the saved task reproduces the test accuracy it reports, and runs
that did not see the same images are refused."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from inca.cli import main
from inca.errors import IncaError
from inca.recipes.cross_ensemble import ensemble_runs
from inca.recipes.member_pool import kept_members, load_member_pool
from inca.tasks import CombinedTask, evaluate_tasks, load_task, run_split
from inca.tasks.by_backbone import MultiBackbone
from inca.train.candidate import Candidate
from inca.train.select import accuracy

pytestmark = pytest.mark.integration  # trains two runs end to end: the full tier

SIZES = ["--data", "digits", "--image-size", "32", "--train-size", "160", "--val-size", "80",
         "--test-size", "60", "--epochs", "3", "--batch-size", "40", "--workers", "0",
         "--no-progress", "--min-steps", "0", "--halving-epochs", "0",
         "--plan", "inca taps=block.* lr=3e-3,1e-2; linear taps=block.*[-2:] lr=1e-2"]  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for model in ("tiny-vit", "tiny-dinov2"):
        assert main(["train", "--model", model, *SIZES, "--out", str(root / model)]) == 0
    return root


def test_each_run_keeps_its_members_and_their_probabilities(runs) -> None:
    pool = load_member_pool(runs / "tiny-vit")
    results = json.loads((runs / "tiny-vit" / "results.json").read_text())
    assert set(pool.task.member_names) == {a["name"] for a in results["adapters"]}
    for a in results["adapters"]:  # the very probabilities selection saw, to float16
        got = accuracy(pool.probs["test"][a["name"]], pool.labels["test"])
        assert got == pytest.approx(a["test_acc"], abs=1.5 / 60)


def test_the_union_is_selected_saved_and_reproduces_its_numbers(runs, capsys) -> None:
    out = runs / "both"
    args = ["ensemble", str(runs / "tiny-vit"), str(runs / "tiny-dinov2"), "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "tiny-vit alone" in printed and "all runs" in printed
    task = load_task(out)
    assert isinstance(task, CombinedTask), printed  # these seeds pick members of both
    assert task.backbone_names == ["tiny-vit", "tiny-dinov2"]
    # the saved task, run on the real test images through both backbones, scores as reported
    multi = MultiBackbone([task], device="cpu")  # each part on its backbone, as the runs ran
    got, n = evaluate_tasks(multi, run_split(task, "test"), progress=False)
    assert got[task.name] == pytest.approx(task.metrics["test_acc"], abs=1.5 / n)
    assert task.metrics["members_by_run"].keys() == {"tiny-vit", "tiny-dinov2"}


def test_runs_on_other_images_are_refused(runs, tmp_path) -> None:
    other = tmp_path / "other"
    sizes = [*SIZES]
    sizes[sizes.index("--val-size") + 1] = "40"
    assert main(["train", "--model", "tiny-vit", *sizes, "--out", str(other)]) == 0
    with pytest.raises(IncaError, match="same images"):
        ensemble_runs([runs / "tiny-dinov2", other], tmp_path / "x")
    old = tmp_path / "old"
    shutil.copytree(runs / "tiny-vit", old, ignore=shutil.ignore_patterns("members", "cache"))
    with pytest.raises(IncaError, match="--resume"):
        ensemble_runs([runs / "tiny-dinov2", old], tmp_path / "y")
    with pytest.raises(IncaError, match="two or more"):
        ensemble_runs([runs / "tiny-dinov2"], tmp_path / "z")


def test_the_kept_members_fit_the_budget_best_first() -> None:
    def member(acc: float) -> Candidate:
        return Candidate(None, None, acc, torch.zeros(10, 2), torch.zeros(20, 2))  # 120 bytes

    members = {"a": member(0.9), "b": member(0.5), "c": member(0.7), "d": member(0.1)}
    assert kept_members(members, [], 10_000) == ["a", "c", "b", "d"]
    assert kept_members(members, [], 250) == ["a", "c"]
    assert kept_members(members, ["d"], 250) == ["a", "d"]  # the run's ensemble, whatever it costs
