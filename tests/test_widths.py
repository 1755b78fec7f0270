"""Every width works with the defaults: the default grid's heads (``heads=D/64,D/32``) resolve to
divisors of each tap's width, and ``inca compare`` with no plan given runs end to end on
backbones 32, 48, 1024 and 1280 wide (every method on 32; the default grid, the plan that
depends on the width, on all four), ``inca train`` on 32 and 48."""

from __future__ import annotations

import json

import pytest

from inca.adapters import build_adapter
from inca.backbones import registry
from inca.backbones.zoo import tiny_factory
from inca.cli import main
from inca.errors import IncaError
from inca.methods.inca.adapter import InCAConfig, default_heads
from inca.train.plan import DEFAULT_PLAN, parse_plan, width_heads
from tests.conftest import compare_in_process

TAPS = ["embed"] + [f"block.{i}" for i in range(12)] + ["final"]


@pytest.mark.parametrize(
    ("width", "heads"),
    [(32, [1, 2]), (48, [1, 2]), (384, [6, 12]), (768, [12, 24]), (1024, [16, 32]),
     (1280, [20, 40])],
)  # fmt: skip
def test_default_grid_heads_divide_the_width(width: int, heads: list[int]) -> None:
    specs = [s for s in parse_plan(DEFAULT_PLAN, TAPS, widths=dict.fromkeys(TAPS, width))
             if s.kind == "inca"]  # fmt: skip
    assert len(specs) == 6 * 8  # 6 blocks x 2 rates x 2 decays x 2 head counts, as on 384
    assert sorted({s.config.heads for s in specs}) == heads
    for s in specs:
        assert s.name.endswith(f".heads{s.config.heads}")
        assert s.config.resolved(width) == (width, s.config.heads)  # splits evenly


def test_width_heads_rules() -> None:
    assert width_heads(["D/64", "D/32"], 200) == [4, 5]  # nearest divisors of 200 to 3.1, 6.3
    assert width_heads(["D/64", "D/32", "D/16"], 8) == [1, 2, 4]  # each moves up when taken
    assert width_heads([4, "D/64"], 256) == [4, 8]  # a literal takes its count too
    assert width_heads(["d/64"], 768) == [12]


def test_tap_groups_and_dim() -> None:
    widths = dict.fromkeys(TAPS, 1024) | {"final": 96}
    specs = parse_plan("inca taps=block.5+block.8 heads=D/64,D/32", TAPS, widths=widths)
    assert [s.name for s in specs] == ["inca.block.5+block.8.lr1e-3.heads16",
                                       "inca.block.5+block.8.lr1e-3.heads32"]  # fmt: skip
    # with dim given the heads split dim, not the tap's width
    specs = parse_plan("inca taps=final dim=128 heads=D/64,D/32", TAPS, widths=widths)
    assert [s.config.heads for s in specs] == [2, 4]
    with pytest.raises(IncaError, match="different widths"):
        parse_plan("inca taps=block.11+final heads=D/64", TAPS, widths=widths)


def test_literal_heads_that_do_not_divide_still_fail_clearly() -> None:
    (spec,) = parse_plan("inca taps=final heads=6", TAPS, widths=dict.fromkeys(TAPS, 32))
    assert spec.config.heads == 6
    with pytest.raises(IncaError, match="width 32 does not split into 6 heads"):
        build_adapter(spec.config, 32, 10)


def test_default_heads_of_an_unset_count() -> None:
    # what adapters without heads were always built with, where it splits the width
    assert [default_heads(w) for w in (32, 100, 384, 768, 1024, 1280)] == [1, 1, 6, 12, 16, 20]
    assert default_heads(200) == 4  # 200 // 64 = 3 does not divide 200: the nearest divisor
    assert InCAConfig().resolved(200) == (200, 4)


# ---------------------------------------------------------------- end to end, on wide backbones
BIG = dict(num_hidden_layers=2, num_attention_heads=4, patch_size=16)  # 2 blocks, 5 tokens
WIDE = {
    "test-vit-48": dict(hidden_size=48),
    "test-vit-1024": dict(hidden_size=1024, **BIG),
    "test-vit-1280": dict(hidden_size=1280, **BIG),
}
MODELS = ["tiny-vit", *WIDE]  # widths 32, 48, 1024, 1280
SIZES = ["--data", "digits", "--image-size", "32", "--train-size", "80", "--val-size", "40",
         "--test-size", "40", "--epochs", "1", "--batch-size", "20", "--workers", "0",
         "--no-progress", "--precision", "fp32", "--min-steps", "0",
         "--halving-epochs", "0"]  # fmt: skip


@pytest.fixture
def wide_models(monkeypatch):
    """Tiny random ViTs of widths 48, 1024 and 1280, loadable by name for this test only."""
    for name, config in WIDE.items():
        entry = registry.BackboneEntry(name, tiny_factory("vit", name, **config), "test only")
        monkeypatch.setitem(registry._REGISTRY, name, entry)


@pytest.mark.integration
@pytest.mark.parametrize("model", MODELS[:2])  # the same plan on the wide ones: under compare
def test_train_with_the_default_plan(model: str, wide_models, tmp_path) -> None:
    out = tmp_path / "run"
    assert main(["train", "--model", model, *SIZES, "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    names = [a["name"] for a in results["adapters"] if a["name"].startswith("inca.")]
    assert len(names) == 8 * len({n.split(".lr")[0] for n in names})  # 8 per block


# every method on tiny-vit; elsewhere the one whose default plan depends on the width (InCA's
# grid, heads=D/64,D/32, and its L-BFGS linear probe): fine-tuning a 1280-wide model made this
# test slow and proves nothing of the width
COMPARED = dict.fromkeys(["test-vit-48", "test-vit-1024", "test-vit-1280"], "inca")


@pytest.mark.integration
@pytest.mark.parametrize("model", MODELS)
def test_compare_with_no_plan(model: str, wide_models, tmp_path, monkeypatch) -> None:
    compare_in_process(monkeypatch)  # test-only models are registered in this process
    out = tmp_path / "cmp"
    chosen = ["--methods", COMPARED[model]] if model in COMPARED else []  # else the default
    assert main(["compare", "--model", model, *SIZES, *chosen, "--out", str(out)]) == 0
    rows = json.loads((out / "compare.json").read_text())["rows"]
    expected = COMPARED.get(model, "linear,inca,vqt,partial,lora,full,stochca").split(",")
    assert {r["method"] for r in rows} >= set(expected)
    results = json.loads((out / "inca" / "results.json").read_text())  # the default grid
    names = [a["name"] for a in results["adapters"] if a["name"].startswith("inca.")]
    assert names and len(names) == 8 * len({n.split(".lr")[0] for n in names})  # 8 per block


def test_a_comparison_made_with_heads_6_12_is_reused_on_384_wide_backbones(monkeypatch) -> None:
    """Results of the old default grid (heads=6,12) stand for the new one where they resolve to
    the same adapters (384 wide), not elsewhere."""
    from inca.recipes.compare import same_adapters
    from inca.recipes.compare_options import CompareOptions

    for width in (384, 1024):
        name = f"test-vit-{width}"
        factory = tiny_factory("vit", name, hidden_size=width, **BIG)
        monkeypatch.setitem(registry._REGISTRY, name, registry.BackboneEntry(name, factory, ""))
    old = DEFAULT_PLAN.replace("heads=D/64,D/32", "heads=6,12")
    before, now = {"frozen": None, "plan": old}, {"frozen": None, "plan": DEFAULT_PLAN}
    assert same_adapters(before, now, CompareOptions(model="test-vit-384", image_size=32))
    assert not same_adapters(before, now, CompareOptions(model="test-vit-1024", image_size=32))
    assert not same_adapters(before | {"frozen": {"patience": 5}}, now,
                             CompareOptions(model="test-vit-384", image_size=32))  # fmt: skip
