"""Evaluating saved tasks: the accuracies of one shared pass, the run's own split rebuilt, and
`inca eval` printing them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import inca
from inca.adapters import adapter_config, build_adapter
from inca.cli import main
from inca.data import ImageTransform, make_loader, make_splits
from inca.errors import IncaError
from inca.tasks import MultiTask, Task, evaluate_tasks, run_split

DIGITS = [str(d) for d in range(10)]
SIZES = {"train": 60, "val": 20, "test": 30}
DATA = {"data": "digits", "sizes": SIZES, "seed": 3}


@pytest.fixture(scope="module")
def backbone() -> inca.Backbone:
    return inca.load_backbone("tiny-dinov2", precision="fp32", device="cpu")


def make_task(backbone, name: str, tap: str, kind: str, seed: int, classes=DIGITS) -> Task:
    """A task of one adapter with random weights, recording the digits run above."""
    adapter = build_adapter(adapter_config(kind), backbone.taps[tap].dim, len(classes))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return Task.from_adapters(
        name, kind, backbone, classes, [(name, tap, adapter)], {"test_acc": 0.125}, DATA
    )


@pytest.fixture(scope="module")
def multi(backbone) -> MultiTask:
    tasks = [
        make_task(backbone, "a", "final", "inca", 1),
        make_task(backbone, "b", "block.0", "linear", 2),
    ]
    return MultiTask(tasks, backbone=backbone)


def test_run_split_rebuilds_the_recorded_split(multi) -> None:
    splits = make_splits("digits", train_size=60, val_size=20, test_size=30, seed=3)
    for split in ("train", "val", "test"):
        subset = run_split(multi.tasks["a"], split)
        np.testing.assert_array_equal(subset.indices, getattr(splits, split).indices)
    with pytest.raises(IncaError, match="unknown split 'dev'"):
        run_split(multi.tasks["a"], "dev")


def test_accuracies_are_each_tasks_own(multi) -> None:
    subset = run_split(multi.tasks["a"], "test")
    accuracies, n = evaluate_tasks(multi, subset, batch_size=8, progress=False, workers=0)
    assert n == len(subset) == 30 and list(accuracies) == ["a", "b"]
    loader = make_loader(subset, ImageTransform(multi.backbone.preprocess), 30, num_workers=0)
    pixels, labels, _ = next(iter(loader))
    with torch.no_grad():
        for name, task in multi.tasks.items():
            probs = task(multi.backbone.forward_taps(pixels, task.taps))
            expected = (probs.argmax(-1) == labels).float().mean().item()
            assert accuracies[name] == pytest.approx(expected, abs=1e-6)


def test_refusals_name_the_task(backbone, multi) -> None:
    other = MultiTask([make_task(backbone, "abc", "final", "linear", 0, ["x", "y"])], backbone)
    with pytest.raises(IncaError, match=r"task abc knows classes \['x', 'y'\]"):
        evaluate_tasks(other, run_split(multi.tasks["a"], "test"), progress=False, workers=0)
    bare = make_task(backbone, "bare", "final", "linear", 0)
    bare.data = {}
    with pytest.raises(IncaError, match="task bare does not record the data"):
        run_split(bare, "test")


def test_eval_command_prints_the_accuracies(multi, tmp_path, capsys) -> None:
    for name, task in multi.tasks.items():
        task.save(tmp_path / "tasks" / name)
    expected, _ = evaluate_tasks(
        multi, run_split(multi.tasks["a"], "val"), progress=False, workers=0
    )
    argv = ["eval", str(tmp_path), "--split", "val", "--precision", "fp32", "--device", "cpu"]
    assert main([*argv, "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "20 images of digits val split of the run; one backbone pass for 2 task(s):"
    assert [ln.split() for ln in lines[1:]] == [
        [name, f"{100 * acc:.2f}%"] for name, acc in expected.items()
    ]  # no saved val_acc to compare with
    assert main(["eval", str(tmp_path / "tasks" / "a"), "--no-progress", "--device", "cpu"]) == 0
    assert "(saved: 12.50%)" in capsys.readouterr().out
