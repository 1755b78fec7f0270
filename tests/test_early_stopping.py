"""Early stopping that stops: patience at most 10 epochs, counted on accuracy or a 1% better
validation loss, so a flat run ends and a plateau that is still learning is not cut short."""

from __future__ import annotations

import pytest
import torch

import inca
from inca.data import make_splits
from inca.train import TrainConfig, adapter_trainer, parse_plan
from inca.train.budget import PATIENCE_MAX_EPOCHS, resolve_budget


def test_patience_never_waits_more_than_ten_epochs() -> None:
    # 1,800 images at batch 128: 800 steps would be 57 epochs; the cap makes it 10
    small = resolve_budget(steps_per_epoch=14, epochs=20, min_steps=1000, patience=800)
    assert small.max_epochs == 72 and small.patience_steps == PATIENCE_MAX_EPOCHS * 14 == 140
    # the main job's 10k images (79 steps an epoch): 800 steps is about 10 epochs already
    assert resolve_budget(79, 20, 1000, 800).patience_steps == 790
    assert resolve_budget(500, 20, 1000, 800).patience_steps == 1000  # at least two epochs
    # a patience the user gives is not capped
    assert resolve_budget(14, 20, 1000, 800, patience_cap_epochs=0).patience_steps == 800


@pytest.fixture(scope="module")
def setup():
    backbone = inca.load_backbone("tiny-vit", precision="fp32")
    splits = make_splits("digits", train_size=120, val_size=40, test_size=40, seed=0)
    return backbone, splits


def scripted(setup, tmp_path, script, epochs=20):
    """A one-member trainer (3 steps an epoch, patience 2 epochs) whose validation
    probabilities at epoch e are ``script(e, labels)``: the rule is tested, not the model."""
    backbone, splits = setup
    plan = "linear taps=block.1 lr=1e-3"
    cfg = TrainConfig(epochs=epochs, batch_size=40, workers=0, progress=False, warmup=0.0,
                      patience=6)  # fmt: skip
    specs = parse_plan(plan, list(backbone.taps))
    t = adapter_trainer(backbone, splits, specs, cfg, tmp_path, {"plan": plan})
    labels = torch.as_tensor(splits.val.labels)
    name = t.members.names[0]
    t.predict = lambda split: ({name: script(t.progress.epoch, labels)}, labels)
    t.fit()
    return t, name


def plateau_probs(labels: torch.Tensor, p_true: float, jumped: bool) -> torch.Tensor:
    """Every image called class 0 (the 'majority'), with ``p_true`` on its own class where it is
    not class 0; after the jump, every image right."""
    probs = torch.full((len(labels), 10), 0.0)
    for i, y in enumerate(labels.tolist()):
        if jumped:
            probs[i, y] = 0.9
            probs[i, (y + 1) % 10] = 0.1
        elif y == 0:
            probs[i, 0] = 1.0
        else:
            probs[i, y], probs[i, 0] = p_true, 1 - p_true
    return probs


@pytest.mark.integration
def test_plateau_then_jump_is_not_cut_short(setup, tmp_path) -> None:
    """Six epochs at the majority class while the loss falls, then the jump (FACTS: a real
    adapter sat at 75% for 6 epochs, then reached 92-99%). Accuracy alone would stop at 3."""
    t, name = scripted(
        setup, tmp_path, lambda e, y: plateau_probs(y, 0.1 + 0.05 * e, jumped=e >= 7)
    )
    assert t.progress.best_epoch[name] == 7 and t.progress.best_acc[name] == 1.0
    assert t.progress.stopped and t.progress.epoch == 9  # then two flat epochs end it


@pytest.mark.integration
def test_flat_run_stops_after_patience(setup, tmp_path) -> None:
    t, name = scripted(setup, tmp_path, lambda e, y: plateau_probs(y, 0.3, jumped=False))
    assert t.progress.stopped and t.progress.epoch == 3 and t.progress.best_epoch[name] == 1


@pytest.mark.integration
def test_loss_creeping_below_one_percent_does_not_hold_the_run(setup, tmp_path) -> None:
    """A loss that improves by 0.3% an epoch is not progress: the run still ends."""
    t, _ = scripted(setup, tmp_path, lambda e, y: plateau_probs(y, 0.3 * 1.003**e, False))
    assert t.progress.stopped and t.progress.epoch == 3


def test_the_default_batch_fits_small_training_sets(capsys) -> None:
    from inca.train.budget import fitted_batch_size

    assert fitted_batch_size(10_000, 128) == 128 and fitted_batch_size(1836, 128) == 128
    assert fitted_batch_size(500, 128) == 32  # 15 steps an epoch, not 3
    assert fitted_batch_size(60, 128) == 16
    assert fitted_batch_size(21, 128) == 21  # one batch of every image, not 16 of 21
    config = TrainConfig(batch_size=128)
    assert config.fitted_to(60).batch_size == 16
    assert "batch size 16" in capsys.readouterr().out
    assert TrainConfig(batch_size=128, fit_batch=False).fitted_to(60).batch_size == 128


def test_a_batch_or_patience_the_user_gives_is_kept() -> None:
    from inca.cli import build_parser
    from inca.cli.options import train_config

    parse = build_parser().parse_args
    plain = train_config(parse(["train"]), frozen=True)
    assert plain.fit_batch and plain.patience_cap_epochs == PATIENCE_MAX_EPOCHS
    chosen = train_config(parse(["train", "--batch-size", "128", "--patience", "2000"]), True)
    assert not chosen.fit_batch and chosen.patience_cap_epochs == 0
    assert chosen.budget(14).patience_steps == 2000


def test_a_refused_resume_says_what_changed() -> None:
    """A default that follows the data (the metric) may differ on resume: the refusal names
    the value then and now, so the user knows what to pass."""
    from pathlib import Path

    from inca.errors import IncaError
    from inca.train.resume import differences, refuse_other_signature

    then = {"train": {"metric": "accuracy", "epochs": 20}, "plan": [{"tap": "block.1"}]}
    now = {"train": {"metric": "balanced-accuracy", "epochs": 20}, "plan": [{"tap": "block.3"}]}
    assert differences(then, now) == [
        "plan differs", "train.metric: accuracy then, balanced-accuracy now"
    ]  # fmt: skip
    with pytest.raises(IncaError, match="train.metric: accuracy then, balanced-accuracy now"):
        refuse_other_signature(Path("run"), then, now)
