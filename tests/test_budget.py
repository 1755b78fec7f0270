"""The frozen-feature budget: epoch cap raised on small sets, patience, successive halving."""

from __future__ import annotations

import json

import pytest
import torch

import inca
from inca.data import make_splits
from inca.errors import IncaError
from inca.train import TrainConfig, adapter_trainer, parse_plan
from inca.train.budget import resolve_budget, survivors
from inca.train.trainer import Trainer

pytestmark = pytest.mark.integration  # trains end to end: the full tier

PLAN = "inca taps=block.1,block.3 lr=3e-3,1e-3; linear taps=block.3 lr=1e-2"  # 5 members


def test_min_steps_raises_the_cap_and_patience_covers_two_epochs() -> None:
    b = resolve_budget(steps_per_epoch=7, epochs=3, min_steps=100, patience=5)
    assert b.max_epochs == 15 and b.total_steps == 105  # 3 epochs would be 21 steps
    assert b.patience_steps == 14  # never less than two epochs: validation runs once an epoch
    big = resolve_budget(steps_per_epoch=156, epochs=30, min_steps=100, patience=1000)
    assert big.max_epochs == 30 and big.patience_steps == 1000
    assert resolve_budget(10, 5).patience_steps == 0  # 0: never stop early


def test_halving_rungs_double_and_respect_small_sets() -> None:
    assert resolve_budget(100, 20, halving_epochs=2).rungs == (2, 4, 8, 16)
    # 7 steps an epoch: the first rung waits for min_steps / 4 = 50 steps (8 epochs)
    assert resolve_budget(7, 20, min_steps=200, halving_epochs=2).rungs[0] == 8


def test_survivors_rank_by_accuracy_then_validation_loss() -> None:
    acc = {"a": 0.5, "b": 0.9, "c": 0.5, "d": 0.5}
    loss = {"a": 2.0, "b": 1.0, "c": 1.5, "d": 3.0}
    assert survivors(["a", "b", "c", "d"], acc, loss, keep=0.5, min_members=1) == ["b", "c"]
    assert survivors(["a", "b"], acc, loss, keep=0.1, min_members=3) == ["a", "b"]


def test_bad_budget_options_are_refused() -> None:
    with pytest.raises(IncaError, match="halving keeps"):
        TrainConfig(halving_keep=0)
    with pytest.raises(IncaError, match=">= 0"):
        TrainConfig(patience=-1)


@pytest.fixture(scope="module")
def setup():
    backbone = inca.load_backbone("tiny-vit", precision="fp32")
    splits = make_splits("digits", train_size=120, val_size=60, test_size=60, seed=0)
    return backbone, splits


def trainer(setup, out, plan=PLAN, **kw) -> Trainer:
    backbone, splits = setup
    cfg = TrainConfig(batch_size=40, workers=0, progress=False, warmup=0.0, **kw)
    return adapter_trainer(
        backbone, splits, parse_plan(plan, list(backbone.taps)), cfg, out, {"plan": plan}
    )


def test_halving_survivors_train_exactly_as_without_halving(setup, tmp_path) -> None:
    """Members are independent (summed loss, element-wise AdamW): dropping some must not change
    the others, so the survivors' weights equal those of a run that never halved."""
    halved = trainer(setup, tmp_path / "h", epochs=3, halving_epochs=1, halving_keep=0.4,
                     halving_min=2)  # fmt: skip
    halved.fit()
    assert len(halved.active) == 2 and len(halved.progress.dropped_at) == 3
    assert set(halved.progress.dropped_at.values()) == {1}  # the second rung (epoch 2) keeps 2
    full = trainer(setup, tmp_path / "f", epochs=3)
    full.fit()
    for name in halved.active:
        for key, value in full.members.member_state(name).items():
            torch.testing.assert_close(
                halved.members.member_state(name)[key], value, rtol=1e-5, atol=1e-6, msg=key
            )
    log = [json.loads(x) for x in (tmp_path / "h" / "log.jsonl").read_text().splitlines()]
    assert [e["active"] for e in log] == [2, 2, 2] and len(log[0]["dropped"]) == 3
    # dropped members keep their best epoch and come back for selection and export
    halved.load_best()
    assert halved.members.names == full.members.names
    for name, epoch in halved.progress.dropped_at.items():
        assert halved.progress.best_epoch[name] <= epoch


def test_halved_run_resumes_exactly(setup, tmp_path) -> None:
    kw = {"halving_epochs": 1, "halving_keep": 0.4, "halving_min": 2}
    straight = trainer(setup, tmp_path / "a", epochs=3, **kw)
    straight.fit()
    first = trainer(setup, tmp_path / "b", epochs=3, **kw)
    first.budget = first.config.budget(first.steps_per_epoch)
    first.budget = type(first.budget)(**(first.budget.__dict__ | {"max_epochs": 2}))
    first.fit()  # "interrupted" after epoch 2, after the rung
    resumed = trainer(setup, tmp_path / "b", epochs=3, **kw)
    resumed.fit(resume=True)
    assert resumed.progress.epoch == 3 and resumed.active == straight.active
    for name in straight.active:
        for key, value in straight.members.member_state(name).items():
            torch.testing.assert_close(
                resumed.members.member_state(name)[key], value, rtol=0, atol=0
            )


def test_patience_stops_a_run_that_no_longer_improves(setup, tmp_path) -> None:
    t = trainer(setup, tmp_path, plan="linear taps=block.3 lr=1e-9", epochs=20, patience=1)
    t.fit()
    # improved at epoch 1, then two epochs (6 steps) without
    assert t.progress.stopped and t.progress.epoch == 3
    log = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert "stopped" in log[-1] and len(log) == 3
