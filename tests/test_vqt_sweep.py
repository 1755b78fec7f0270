"""One-to-many VQT: a learning-rate sweep trained from one backbone pass must equal the same
rates trained one run each, and resume like any run."""

from __future__ import annotations

import pytest
import torch

from inca.methods.pixel_config import finetune_config
from tests.conftest import killed_after_first_epoch

pytestmark = pytest.mark.integration  # trains end to end: the full tier

LRS = [1e-2, 3e-2]


@pytest.fixture(scope="module")
def setup(tiny_setup):
    return tiny_setup


def _config():
    from inca.train import TrainConfig

    return TrainConfig(epochs=2, batch_size=20, workers=0, progress=False, warmup=0.0)


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:  # one block call for all members vs one per run: float rounding only
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-4)


def test_a_one_pass_sweep_equals_one_run_per_rate(setup, tmp_path) -> None:
    from inca.train.finetune_run import fine_tune, fine_tune_sweep

    backbone, splits = setup
    ft = finetune_config(method="vqt", queries=2, layer_queries="1:0")
    swept = fine_tune_sweep(backbone, splits, ft, LRS, _config(), tmp_path / "sweep")
    assert (tmp_path / "sweep" / "lr0.01+0.03").is_dir()  # one shared run
    assert [record["config"]["lr"] for _, record in swept] == LRS
    for lr, (model, record) in zip(LRS, swept, strict=True):
        alone, alone_record = fine_tune(
            backbone, splits, finetune_config(method="vqt", queries=2, layer_queries="1:0", lr=lr),
            _config(), tmp_path / f"alone{lr}",
        )  # fmt: skip
        _assert_same(model.changed_state(), alone.changed_state())
        assert abs(record["val_acc"] - alone_record["val_acc"]) <= 1 / len(splits.val)
        assert record["trainable_params"] == alone_record["trainable_params"]
    a, b = (m.changed_state()["queries.0"] for m, _ in swept)
    assert not torch.allclose(a, b)  # the rates really differ


def test_other_methods_and_the_naive_path_run_one_rate_at_a_time(setup, tmp_path) -> None:
    assert finetune_config(method="vqt").shares_backbone_pass(LRS)
    assert not finetune_config(method="vqt").shares_backbone_pass(LRS[:1])
    assert not finetune_config(method="vqt", vqt_naive=True).shares_backbone_pass(LRS)
    assert not finetune_config(method="lora").shares_backbone_pass(LRS)


def test_members_must_differ_only_in_lr(setup) -> None:
    from inca.errors import IncaError
    from inca.methods.vqt.sweep import VQTSweep

    backbone, _ = setup
    configs = [finetune_config(method="vqt", lr=1e-2), finetune_config(method="vqt", queries=2)]
    with pytest.raises(IncaError, match="differ only in lr"):
        VQTSweep(backbone, 3, configs, seed=0)


def test_an_interrupted_sweep_resumes_to_the_same_result(setup, tmp_path, monkeypatch) -> None:
    from inca.train.finetune_run import fine_tune_sweep

    backbone, splits = setup
    ft = finetune_config(method="vqt")
    whole = fine_tune_sweep(backbone, splits, ft, LRS, _config(), tmp_path / "whole")
    with killed_after_first_epoch(monkeypatch):
        fine_tune_sweep(backbone, splits, ft, LRS, _config(), tmp_path / "cut")
    resumed = fine_tune_sweep(backbone, splits, ft, LRS, _config(), tmp_path / "cut", True)
    for (a, ra), (b, rb) in zip(whole, resumed, strict=True):
        sa, sb = a.changed_state(), b.changed_state()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
        assert ra["val_acc"] == rb["val_acc"] and ra["best_epoch"] == rb["best_epoch"]
