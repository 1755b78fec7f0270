"""The generic path: any nn.Module, taps by module-name pattern, CNN maps as tokens."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import inca
from inca.errors import IncaError


class TinyCNN(nn.Module):
    """Two conv stages and a residual block that adds in place (like ResNet's out += identity)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.stage1 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.stage1(x)
        y += x  # in place, after stage1's output was captured
        y = self.stage2(y)
        return self.head(y.mean((2, 3)))


def make(taps, **kw) -> inca.Backbone:
    torch.manual_seed(0)
    return inca.load_backbone(TinyCNN(), taps=taps, image_size=16, precision="fp32", **kw)


def test_cnn_maps_become_tokens_equal_to_hook_outputs() -> None:
    bb = make(["stage?"])
    assert bb.tap_names == ["stage1", "stage2"]
    assert bb.taps["stage1"].shape == (8 * 8, 8) and bb.taps["stage2"].shape == (4 * 4, 16)
    x = torch.randn(2, 3, 16, 16)
    seen = {}
    model = bb.model
    handles = [
        getattr(model, n).register_forward_hook(lambda m, a, o, n=n: seen.__setitem__(n, o.clone()))
        for n in ["stage1", "stage2"]
    ]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    out = bb.forward_taps(x)
    for name in ["stage1", "stage2"]:  # (B, C, H, W) -> (B, H*W, C), token t = pixel (t//W, t%W)
        expected = seen[name].flatten(2).transpose(1, 2)
        torch.testing.assert_close(out[name], expected, rtol=0, atol=0)
    assert not torch.equal(out["stage1"], (seen["stage1"] * 2).flatten(2).transpose(1, 2))


def test_stopping_early_skips_later_modules_and_changes_nothing() -> None:
    bb = make({"early": "stage1", "late": "stage2"})
    _ = bb.taps  # the one-off dry run that finds tap shapes runs the whole model
    calls = []
    h = bb.model.head.register_forward_hook(lambda *a: calls.append("head"))
    x = torch.randn(1, 3, 16, 16)
    early_alone = bb.forward_taps(x, ["early"])["early"]
    both = bb.forward_taps(x)
    h.remove()
    assert calls == []  # the head never runs: the deepest tap stops the pass
    torch.testing.assert_close(early_alone, both["early"], rtol=0, atol=0)


def test_patterns_do_not_cross_dots() -> None:
    bb = make(["stage1.*"])
    assert bb.tap_names == ["stage1.0", "stage1.1"]


def test_vector_outputs_are_one_token() -> None:
    bb = make(["head"])
    assert bb.taps["head"].shape == (1, 5)


def test_bad_patterns_are_named() -> None:
    with pytest.raises(IncaError, match="matches no module.*stage1"):
        make(["blocks.*"])
    with pytest.raises(IncaError, match="exactly one"):
        make({"x": "stage*"})


def test_module_run_twice_is_refused() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return self.conv(self.conv(x))

    bb = inca.load_backbone(Twice(), taps=["conv"], image_size=8, precision="fp32")
    with pytest.raises(IncaError, match="more than once"):
        _ = bb.taps
