"""Adapters: every fast form equals the plain nn.MultiheadAttention form (forward and grads)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from inca.adapters import adapter_config, build_adapter, normalize_tokens
from inca.errors import IncaError, UnknownNameError
from inca.methods.inca import InCAAdapter, InCAConfig
from inca.methods.linear import LinearProbeConfig


def reference_logits(adapter: InCAAdapter, x: torch.Tensor) -> torch.Tensor:
    """The InCA adapter written with torch's own nn.MultiheadAttention and an affine LayerNorm."""
    d, D, h = adapter.dim, adapter.in_dim, adapter.heads
    mha = nn.MultiheadAttention(d, h, kdim=D, vdim=D, batch_first=True)
    w = {"q": adapter.q_proj.weight, "k": adapter.k_proj.weight, "v": adapter.v_proj.weight}
    if mha._qkv_same_embed_dim:
        del mha.in_proj_weight
        mha.in_proj_weight = torch.cat([w["q"], w["k"], w["v"]])
    else:
        for name in "qkv":
            delattr(mha, f"{name}_proj_weight")
            setattr(mha, f"{name}_proj_weight", w[name])
    del mha.in_proj_bias, mha.out_proj.weight, mha.out_proj.bias
    no_key_bias = torch.zeros_like(adapter.q_proj.bias)
    mha.in_proj_bias = torch.cat([adapter.q_proj.bias, no_key_bias, adapter.v_proj.bias])
    mha.out_proj.weight, mha.out_proj.bias = adapter.o_proj.weight, adapter.o_proj.bias
    tokens = x * adapter.norm_weight + adapter.norm_bias  # LayerNorm with affine, on x̂
    queries = adapter.queries.expand(x.shape[0], -1, -1)
    attn, _ = mha(queries, tokens, tokens, need_weights=False)
    z = adapter.queries + attn
    if adapter.mlp is not None:
        z = z + adapter.mlp(z)
    return adapter.head(adapter.out_norm(z).mean(1))


def randomize(adapter: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if p.ndim == 1 else 0.0))


@pytest.mark.parametrize("path", ["plain", "folded"])
@pytest.mark.parametrize(
    "in_dim, options",
    [
        (32, {}),
        (24, {"queries": 3, "dim": 16, "heads": 4}),
        (32, {"queries": 2, "heads": 2, "mlp_ratio": 2.0}),
    ],
)
def test_both_paths_equal_multihead_attention(path, in_dim, options) -> None:
    torch.manual_seed(0)
    adapter = InCAAdapter(InCAConfig(path=path, **options), in_dim=in_dim, num_classes=5)
    randomize(adapter)
    x = normalize_tokens(torch.randn(4, 11, in_dim))
    ours = adapter(x)
    ref = reference_logits(adapter, x)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)

    g_ours = torch.autograd.grad(ours.square().sum(), list(adapter.parameters()), allow_unused=True)
    g_ref = torch.autograd.grad(ref.square().sum(), list(adapter.parameters()), allow_unused=True)
    for (name, _), a, b in zip(adapter.named_parameters(), g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_auto_path_picks_the_cheaper_form() -> None:
    few = InCAAdapter(InCAConfig(), in_dim=384, num_classes=10)
    assert few.choose_path(tokens=65) == "folded"
    many = InCAAdapter(InCAConfig(queries=64, heads=12), in_dim=384, num_classes=10)
    assert many.choose_path(tokens=65) == "plain"


def test_parameter_count_matches_the_paper_for_vit_l() -> None:
    adapter = build_adapter(InCAConfig(), in_dim=1024, num_classes=100)
    projections = 4 * 1024 * 1024 + 3 * 1024  # q, k, v, o (no key bias)
    norms, query, head = 2 * 1024 + 2 * 1024, 1024, 1024 * 100 + 100
    assert adapter.num_params() == projections + norms + query + head
    assert 0.013 < adapter.num_params() / 304_326_632 < 0.0145  # ViT-L/16: 1.3-1.4%
    assert adapter.heads == 16


def test_linear_probe_pools() -> None:
    x = normalize_tokens(torch.randn(3, 5, 8))
    for pool, width in [("cls", 8), ("mean", 8), ("cls+mean", 16)]:
        probe = build_adapter(LinearProbeConfig(pool=pool), in_dim=8, num_classes=4)
        assert probe.head.in_features == width
        assert probe(x).shape == (3, 4)
    probe = build_adapter(LinearProbeConfig(pool="mean"), 8, 4, num_prefix_tokens=2)
    expected = probe.head(x[:, 2:].mean(1))
    torch.testing.assert_close(probe(x), expected)


def test_normalize_tokens_of_inference_tensors_can_be_trained_on() -> None:
    with torch.inference_mode():
        tokens = torch.randn(2, 5, 8)
    x = normalize_tokens(tokens)
    probe = build_adapter(LinearProbeConfig(), 8, 3)
    probe(x).sum().backward()  # would raise if x were an inference tensor saved for backward
    torch.testing.assert_close(x.mean(-1), torch.zeros(2, 5), atol=1e-6, rtol=0)


def test_bad_options_are_named() -> None:
    with pytest.raises(IncaError, match="queries must be at least 1"):
        InCAConfig(queries=0)
    with pytest.raises(IncaError, match="does not split into 5 heads"):
        build_adapter(InCAConfig(heads=5), in_dim=32, num_classes=2)
    with pytest.raises(IncaError, match=r"unknown option\(s\) \['query'\]"):
        adapter_config("inca", {"query": 2})
    with pytest.raises(UnknownNameError, match="unknown adapter kind 'lora'"):
        adapter_config("lora")
    with pytest.raises(IncaError, match="needs a CLS token"):
        build_adapter(LinearProbeConfig(pool="cls"), 8, 2, num_prefix_tokens=0)


@pytest.mark.parametrize(
    "config",
    [InCAConfig(path="folded", queries=2), InCAConfig(path="plain", mlp_ratio=1.0),
     LinearProbeConfig(pool="cls+mean")],
)  # fmt: skip
def test_a_stack_equals_its_adapters_one_by_one(config) -> None:
    from inca.adapters.stack import AdapterStack

    adapters = []
    for seed in range(3):
        torch.manual_seed(seed)
        a = build_adapter(config, in_dim=16, num_classes=4)
        randomize(a, seed)
        adapters.append(a)
    stack = AdapterStack(adapters)
    x = normalize_tokens(torch.randn(3, 5, 7, 16))  # a different tap per adapter: (N, B, T, D)
    ours = stack(x)  # (N, B, C)
    for i, a in enumerate(adapters):
        torch.testing.assert_close(ours[i], a(x[i]), rtol=1e-5, atol=1e-6)
    # gradients reach each adapter's slice exactly as its own backward would
    weights = torch.randn_like(ours)
    (ours * weights).sum().backward()
    for i, a in enumerate(adapters):
        (a(x[i]) * weights[i]).sum().backward()
        for name, p in a.named_parameters():
            stacked_grad = stack.params[name.replace(".", "__")].grad[i]
            torch.testing.assert_close(stacked_grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
    exported = stack.export(1)
    torch.testing.assert_close(exported(x[1]), adapters[1](x[1]))


def test_adapters_of_other_shapes_do_not_stack() -> None:
    from inca.adapters.stack import AdapterStack

    a = build_adapter(InCAConfig(), 32, 3)
    b = build_adapter(InCAConfig(queries=2), 32, 3)
    with pytest.raises(IncaError, match="cannot be stacked"):
        AdapterStack([a, b])


def test_both_layouts_of_the_shared_pooling_agree() -> None:
    """The grid layout (all taps in one batched matmul) and the per-tap layout are one
    function: same pooled tokens and gradients, including stacks whose adapters list their
    taps out of order (the grid then permutes queries in and pooled rows out)."""
    from inca.adapters import shared_pool as sp

    torch.manual_seed(0)
    x = normalize_tokens(torch.randn(4, 3, 5, 8))  # (n_taps, B, T, D)
    taps = [[1, 3], [3, 1], [1, 3]]
    assert sp.is_grid(taps) and not sp.is_grid([[1, 3], [1]]) and not sp.is_grid([[1, 1]])
    results = []
    for pool in (sp._pool_grid, sp._pool_by_tap):
        queries = [torch.randn(2, j, 8, generator=torch.Generator().manual_seed(j)).requires_grad_()
                   for j in (2, 4, 6)]  # fmt: skip
        out = pool(queries, taps, x)
        assert [tuple(o.shape) for o in out] == [(2, 3, j, 8) for j in (2, 4, 6)]
        sum((o * torch.arange(o.numel()).view_as(o).sin()).sum() for o in out).backward()
        results.append((out, [q.grad for q in queries]))
    for a, b in zip(*results, strict=True):
        for ta, tb in zip(a, b, strict=True):
            torch.testing.assert_close(ta, tb, rtol=1e-5, atol=1e-6)


SAME_SHAPES = [(7, 16)] * 3  # (tokens, width) per tap: a ViT's
CNN_SHAPES = [(7, 16), (5, 16), (9, 24)]  # a CNN's stages: token counts and widths differ


@pytest.mark.parametrize(
    ("plan", "shapes"),
    [
        (
            "inca taps=block.0,block.2 lr=1e-3,3e-3 queries=1,2 heads=2; "
            "inca taps=block.1 path=plain heads=2; inca taps=block.2 dropout=0.5 heads=4; "
            "linear taps=block.1; inca taps=block.2+block.0,block.1+block.2 heads=2; "
            "inca taps=block.*+block.1 queries=2 heads=2 path=plain",
            SAME_SHAPES,
        ),
        (
            "inca taps=block.2,block.0 lr=1e-3,3e-3 queries=1,2 heads=2,4; linear taps=block.1",
            SAME_SHAPES,
        ),
        (
            "inca taps=block.* lr=1e-3,3e-3 heads=2; linear taps=block.*; "
            "inca taps=block.0+block.1 heads=2; inca taps=block.2,block.1 path=plain heads=2",
            CNN_SHAPES,
        ),
    ],
    ids=["by-tap", "grid", "taps-of-other-shapes"],
)
def test_a_bank_sharing_attention_pooling_equals_each_adapter_alone(
    plan: str, shapes: list[tuple[int, int]]
) -> None:
    """The bank joins the token-sized matmuls of every folded adapter on a tap (across stacks
    of other learning rates and query counts); each adapter must still compute exactly its own
    function, outputs and gradients, beside plain-path, dropout and multi-tap adapters that do
    not share (a multi-tap adapter alone reads its taps' tokens joined along the token axis)."""
    from inca.adapters.tap_batch import TapBatch
    from inca.adapters.tap_groups import group_tokens
    from inca.backbones.base import TapInfo
    from inca.train import AdapterBank, parse_plan

    taps = {f"block.{i}": TapInfo(f"block.{i}", t, d) for i, (t, d) in enumerate(shapes)}
    specs = parse_plan(plan, taps)
    bank = AdapterBank(specs, taps, num_classes=4, num_prefix_tokens=1, seed=0)
    bank.eval()  # dropout off: every adapter is deterministic, the dropout one unshared
    with torch.no_grad():
        for p in bank.parameters():
            p.add_(0.1 * torch.randn_like(p))  # move off the init: norms and biases matter
    if shapes != SAME_SHAPES:
        x = TapBatch([normalize_tokens(torch.randn(5, t, d)) for t, d in shapes])
    else:
        x = normalize_tokens(torch.randn(3, 5, 7, 16))  # (n_taps, B, T, D)
    ours = bank.forward_normalized(x)
    assert set(ours) == set(bank.names) and len(ours) == len(specs)
    weights = {n: torch.randn(5, 4) for n in ours}
    sum((ours[n] * weights[n]).sum() for n in ours).backward()
    tokens = dict(zip(bank.taps, x, strict=True))
    for name in bank.names:
        alone = bank.export_adapter(name)
        expected = alone(group_tokens(tokens, bank.specs[name].tap))
        torch.testing.assert_close(ours[name], expected, rtol=1e-5, atol=1e-5, msg=name)
        (expected * weights[name]).sum().backward()
        k, i = bank._where[name]
        for pname, p in alone.named_parameters():
            got = bank.stacks[k].stacked()[pname].grad[i]
            torch.testing.assert_close(got, p.grad, rtol=1e-4, atol=1e-5, msg=f"{name} {pname}")
