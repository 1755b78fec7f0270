"""One-to-many training: N adapters trained together == each trained alone; training learns and
logs; a resume with other settings is refused. (A resumed run of adapters ends where a straight
one does: tests/test_method_matrix.py, for every adapter method and a one-pass sweep.)"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import inca
from inca.data import make_splits
from inca.errors import IncaError
from inca.train import TrainConfig, adapter_trainer, parse_plan

pytestmark = pytest.mark.integration  # trains end to end: the full tier

PLAN = "inca taps=block.1,final,block.1+block.3 lr=3e-3; linear taps=block.3 lr=1e-2"


@pytest.fixture(scope="module")
def setup():
    backbone = inca.load_backbone("tiny-vit", precision="fp32")
    splits = make_splits("digits", train_size=120, val_size=60, test_size=60, seed=0)
    return backbone, splits


def trainer(setup, plan, out, epochs=2, **kw):
    backbone, splits = setup
    specs = parse_plan(plan, list(backbone.taps))
    cfg = TrainConfig(epochs=epochs, batch_size=40, workers=0, progress=False, **kw)
    return adapter_trainer(backbone, splits, specs, cfg, out, signature={"plan": plan})


def test_together_equals_alone(setup, tmp_path) -> None:
    together = trainer(setup, PLAN, tmp_path / "all")
    together.fit()
    names = together.members.names
    assert len(names) == 4
    for name in names:
        spec = together.members.specs[name]
        alone_plan = f"{spec.kind} taps={spec.tap} lr={spec.lr}"
        alone = trainer(setup, alone_plan, tmp_path / name)
        assert alone.members.names == [name]
        alone.fit()
        mine = together.members.member_state(name)
        theirs = alone.members.member_state(name)
        for key in mine:  # float32 rounding of a summed vs single loss: 1e-6 is ample
            torch.testing.assert_close(mine[key], theirs[key], rtol=1e-5, atol=1e-6, msg=key)
        assert together.progress.best_acc[name] == alone.progress.best_acc[name]


def test_training_learns_and_logs(setup, tmp_path) -> None:
    t = trainer(setup, PLAN, tmp_path, epochs=8, warmup=0.0)
    t.fit()
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == list(range(1, 9))
    assert set(log[0]["val_acc"]) == set(t.members.names)
    for name in t.members.names:  # a random 4-block ViT: weak features, but every adapter learns
        assert log[-1]["train_loss"][name] < log[0]["train_loss"][name] - 0.05, name
    assert max(t.progress.best_acc.values()) > 0.15  # 10 classes: chance is 0.1


def test_resume_refuses_other_settings(setup, tmp_path) -> None:
    trainer(setup, PLAN, tmp_path, epochs=1).fit()
    other = trainer(setup, "inca taps=final", tmp_path, epochs=1)
    with pytest.raises(IncaError, match="cannot resume.*plan"):
        other.fit(resume=True)


def test_too_small_training_split(setup, tmp_path) -> None:
    backbone, splits = setup
    specs = parse_plan("linear taps=final", list(backbone.taps))
    with pytest.raises(IncaError, match="fewer than one batch"):
        adapter_trainer(backbone, splits, specs, TrainConfig(batch_size=500), tmp_path, {})


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="torch.compile on CPU needs a C++ compiler")  # fmt: skip
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's own, while compiling
def test_compiled_steps_train_as_eager_ones(setup, tmp_path) -> None:
    """``compile=True`` changes how the step runs, not what it computes: after two epochs
    every member's weights match the eager run's (float rounding of fused kernels), and a
    checkpoint of either resumes the other (compiling is not part of the signature)."""
    grid = "inca taps=block.1,final lr=3e-3,1e-3; linear taps=block.3 lr=1e-2"
    eager = trainer(setup, grid, tmp_path / "eager")
    compiled = trainer(setup, grid, tmp_path / "compiled", compile=True)
    assert compiled._forward() is not compiled.members.forward_batch
    eager.fit()
    compiled.fit()
    for name in eager.members.names:
        mine, theirs = eager.members.member_state(name), compiled.members.member_state(name)
        for key in mine:
            torch.testing.assert_close(mine[key], theirs[key], rtol=1e-4, atol=1e-5, msg=key)
    assert eager.config.signature() == compiled.config.signature()
