from __future__ import annotations

import contextlib
import os

import pytest


def require_or_skip(condition: bool, reason: str) -> None:
    """Skip when something optional is absent, unless INCA_REQUIRE_SLOW=1 (CI): then fail."""
    if condition:
        return
    if os.environ.get("INCA_REQUIRE_SLOW") == "1":
        pytest.fail(f"{reason} (INCA_REQUIRE_SLOW=1: the slow tests must run here)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def tiny_setup():
    """A tiny fp32 DINOv2 and small digits splits: for the methods trained through the backbone."""
    import inca
    from inca.data import make_splits

    backbone = inca.load_backbone("tiny-dinov2", precision="fp32")
    splits = make_splits("digits", train_size=80, val_size=40, test_size=40, seed=0)
    return backbone, splits


def fine_tune_tiny(setup, out, **options):
    """One epoch of a method (FineTuneConfig options, lr 1e-2 unless given) on ``setup``."""
    from inca.methods.pixel_config import finetune_config
    from inca.train import TrainConfig
    from inca.train.pixel_sweep import fine_tune

    backbone, splits = setup
    cfg = TrainConfig(epochs=1, batch_size=20, workers=0, progress=False, warmup=0.0)
    return fine_tune(backbone, splits, finetune_config(**({"lr": 1e-2} | options)), cfg, out)


@contextlib.contextmanager
def killed_after_first_epoch(monkeypatch):
    """Inside the block a training run is killed (KeyboardInterrupt) right after it writes its
    first epoch's checkpoint; the block expects that."""
    from inca.train.trainer import Trainer

    real_save = Trainer.save_checkpoint

    def save_then_stop(self):
        real_save(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "save_checkpoint", save_then_stop)
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        monkeypatch.setattr(Trainer, "save_checkpoint", real_save)


def compare_in_process(monkeypatch) -> None:
    """`inca compare` runs every method in this process, as under torchrun, not each in a fresh
    process of its own (the default, for its own peak memory): seconds less per method, and
    backbones registered by the test are found."""
    import functools

    import inca.recipes.compare as recipe

    monkeypatch.setattr(recipe, "compare", functools.partial(recipe.compare, in_process=True))
