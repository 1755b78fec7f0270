"""The schedule every method shares: linear warm-up then cosine decay, at chosen steps, and the
Trainer applying it to every parameter group at every step; the batch order of an epoch."""

from __future__ import annotations

import math

import pytest
import torch

from inca.train.schedule import epoch_order, lr_factor


@pytest.mark.parametrize(
    ("step", "factor"),
    [
        (0, 0.1),  # warm-up: (step + 1) / warmup_steps, so no step at a rate of 0
        (4, 0.5),
        (9, 1.0),  # the last warm-up step reaches the full rate
        (10, 1.0),  # the cosine starts at its top
        (35, 0.5 * (1 + math.cos(math.pi / 4))),  # a quarter of the way down
        (60, 0.5),  # half way
        (85, 0.5 * (1 + math.cos(3 * math.pi / 4))),
        (109, 0.5 * (1 + math.cos(math.pi * 99 / 100))),  # the last step: near 0, not 0
        (110, 0.0),  # the end of the run
        (150, 0.0),  # past it: stays at 0, does not rise again
    ],
)
def test_warmup_then_cosine(step, factor) -> None:
    """110 steps, 10 of them warm-up: the cosine spans the other 100."""
    assert lr_factor(step, 110, 10) == pytest.approx(factor, abs=1e-12)


def test_no_warmup_starts_at_the_full_rate() -> None:
    assert lr_factor(0, 100, 0) == 1.0
    assert lr_factor(50, 100, 0) == pytest.approx(0.5)
    assert lr_factor(99, 100, 0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.99)))
    assert lr_factor(0, 1, 0) == 1.0  # a one-step run


def test_warmup_is_linear_and_the_decay_falls_monotonically() -> None:
    warm = [lr_factor(s, 1000, 100) for s in range(100)]
    assert warm == pytest.approx([(s + 1) / 100 for s in range(100)])
    decay = [lr_factor(s, 1000, 100) for s in range(100, 1001)]
    assert all(a > b for a, b in zip(decay, decay[1:], strict=False))


def test_an_epochs_order_is_a_permutation_fixed_by_seed_and_epoch() -> None:
    order = epoch_order(50, seed=0, epoch=1)
    assert sorted(order.tolist()) == list(range(50))
    assert torch.equal(order, epoch_order(50, seed=0, epoch=1))
    assert not torch.equal(order, epoch_order(50, seed=0, epoch=2))
    assert not torch.equal(order, epoch_order(50, seed=1, epoch=1))


@pytest.mark.integration  # trains (a tiny ViT's cached tokens, a few steps)
def test_the_trainer_warms_up_then_decays_every_group(tmp_path) -> None:
    """2 epochs of 3 steps, warm-up 0.5 (3 steps): the rates of every step, every member."""
    import inca
    from inca.data import make_splits
    from inca.train import TrainConfig, adapter_trainer, parse_plan

    backbone = inca.load_backbone("tiny-vit", precision="fp32")
    splits = make_splits("digits", train_size=60, val_size=20, test_size=20, seed=0)
    plan = "inca taps=block.1 lr=1e-3; linear taps=final lr=1e-2"
    cfg = TrainConfig(epochs=2, batch_size=20, workers=0, progress=False, warmup=0.5)
    trainer = adapter_trainer(
        backbone, splits, parse_plan(plan, list(backbone.taps)), cfg, tmp_path, {"plan": plan}
    )
    assert (trainer.total_steps, trainer.warmup_steps) == (6, 3)
    seen: list[list[float]] = []
    trainer.optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: seen.append([g["lr"] / g["base_lr"] for g in opt.param_groups])
    )
    trainer.fit()
    expected = [1 / 3, 2 / 3, 1.0, 1.0, 0.75, 0.25]  # warm-up, then cos over 3 steps
    assert len(seen) == len(expected) and all(len(groups) > 1 for groups in seen)
    for groups, factor in zip(seen, expected, strict=True):
        assert groups == pytest.approx([factor] * len(groups))
