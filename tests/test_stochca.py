"""StochCA: p = 0 is full fine-tuning step for step; p = 1 attends only to the frozen model's
keys/values; evaluation uses self-attention only. (That only the trainable copy changes, and
that a run resumes with its draws, is checked on the runs of tests/test_method_matrix.py.)"""

from __future__ import annotations

import pytest
import torch

from inca.methods.full.model import FineTuneModel
from inca.methods.pixel_config import finetune_config
from tests.conftest import fine_tune_tiny

pytestmark = pytest.mark.integration  # trains end to end: the full tier


@pytest.fixture(scope="module")
def setup(tiny_setup):
    return tiny_setup


def train(setup, tmp_path, **options):
    return fine_tune_tiny(setup, tmp_path, **options)


def test_p0_is_full_fine_tuning_step_for_step(setup, tmp_path) -> None:
    full, full_record = train(setup, tmp_path / "full", method="full")
    stoch, stoch_record = train(setup, tmp_path / "stochca", method="stochca", stochca_p=0.0)
    a, b = full.changed_state(), stoch.changed_state()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert full_record["val_acc"] == stoch_record["val_acc"]


def reference_cross_attention(model: FineTuneModel, backbone, pixels) -> torch.Tensor:
    """p = 1 by hand: hooks on the frozen model's key/value projections record their outputs;
    hooks on the trainable copy's projections replace theirs with them."""
    frozen: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in backbone.model.named_modules():
        if name.endswith(("k_proj", "v_proj")):
            handles.append(module.register_forward_hook(
                lambda m, a, out, name=name: frozen.__setitem__(name, out.detach())))  # fmt: skip
    with torch.no_grad():
        backbone.run_model(backbone.model, pixels)
    for name, module in model.model.named_modules():
        if name.endswith(("k_proj", "v_proj")):
            handles.append(module.register_forward_hook(lambda m, a, out, name=name: frozen[name]))
    try:
        model.stochca = None  # only the hooks act
        return model(pixels)
    finally:
        for h in handles:
            h.remove()


def perturbed(setup, **options) -> FineTuneModel:
    """A StochCA model whose copy already differs from the frozen backbone."""
    backbone, _ = setup
    torch.manual_seed(0)  # the same head every time
    model = FineTuneModel(backbone, 10, finetune_config(method="stochca", **options))
    with torch.no_grad():
        for p in model.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return model.train()


def test_p1_attends_only_to_frozen_keys_and_values(setup) -> None:
    backbone, _ = setup
    pixels = torch.randn(3, 3, 32, 32)
    model = perturbed(setup, stochca_p=1.0)
    out = model(pixels)
    expected = reference_cross_attention(perturbed(setup, stochca_p=1.0), backbone, pixels)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    out.sum().backward()  # the copy's own key/value projections get no gradient
    grads = {n: p.grad for n, p in model.model.named_parameters()}
    assert all(g is None for n, g in grads.items() if "k_proj" in n or "v_proj" in n)
    assert all(g is not None for n, g in grads.items() if "q_proj" in n or "o_proj" in n)
    model.eval()  # evaluation: self-attention only
    with torch.no_grad():
        evaluated = model(pixels)
    assert not torch.allclose(evaluated, out.detach(), atol=1e-3)


def test_per_sample_draws_mix_rows(setup) -> None:
    backbone, _ = setup
    pixels = torch.randn(3, 3, 32, 32)
    model = perturbed(setup, stochca_p=1.0, stochca_per_sample=True)
    with torch.no_grad():
        cross = model(pixels)  # every sample cross-attends everywhere
        model.stochca.draw = lambda batch: torch.tensor([[True, False, True]] * 4)
        mixed = model(pixels)
        model.eval()
        own = model(pixels)
    torch.testing.assert_close(mixed[[0, 2]], cross[[0, 2]])
    torch.testing.assert_close(mixed[1], own[1])
