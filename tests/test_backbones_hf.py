"""Hugging Face backbones: taps equal the model's own hidden states; stopping early changes none."""

from __future__ import annotations

import pytest
import torch
from transformers import ViTConfig, ViTForImageClassification

import inca
from inca.backbones.zoo import tiny_hf
from inca.errors import IncaError, UnknownNameError

FAMILIES = ["vit", "deit", "dinov2", "clip"]


def reference_taps(model, x: torch.Tensor, family: str) -> dict[str, torch.Tensor]:
    """What the model itself says each tap is, through ``output_hidden_states``."""
    kwargs = {} if family == "dinov2" else {"interpolate_pos_encoding": False}
    with torch.no_grad():
        out = model(pixel_values=x, output_hidden_states=True, **kwargs)
    hs = out.hidden_states
    taps = {"embed": hs[0]} | {f"block.{i}": h for i, h in enumerate(hs[1:])}
    final = out.last_hidden_state
    if family == "clip":  # HF post-layernorms only the pooled token; inca's final norms all
        final = model.post_layernorm(final)
    taps["final"] = final
    return taps


@pytest.mark.parametrize("family", FAMILIES)
def test_taps_equal_hidden_states(family: str) -> None:
    model = tiny_hf(family)
    backbone = inca.load_backbone(model, image_size=32, precision="fp32", device="cpu")
    assert backbone.tap_names == ["embed", "block.0", "block.1", "block.2", "block.3", "final"]
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ours = backbone.forward_taps(x)
    ref = reference_taps(backbone.model, x, family)
    assert ours.keys() == ref.keys()
    for tap in ref:
        torch.testing.assert_close(ours[tap], ref[tap], rtol=0, atol=1e-6, msg=tap)
        assert ours[tap].shape[1:] == backbone.taps[tap].shape


@pytest.mark.parametrize("family", FAMILIES)
def test_stopping_early_changes_no_tap(family: str) -> None:
    backbone = inca.load_backbone(f"tiny-{family}", precision="fp32", device="cpu")
    x = torch.randn(2, 3, 32, 32)
    full = backbone.forward_taps(x)
    for tap in ["embed", "block.1", "final"]:
        alone = backbone.forward_taps(x, [tap])
        assert list(alone) == [tap]
        torch.testing.assert_close(alone[tap], full[tap], rtol=0, atol=0)


def test_stops_after_the_deepest_requested_block() -> None:
    backbone = inca.load_backbone("tiny-vit", precision="fp32", device="cpu")
    _ = backbone.taps  # the one-off dry run that finds tap shapes runs every block
    ran: list[int] = []
    blocks = backbone.model.layers
    handles = [
        b.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, b in enumerate(blocks)
    ]
    backbone.forward_taps(torch.randn(1, 3, 32, 32), ["block.1", "embed"])
    for h in handles:
        h.remove()
    assert ran == [0, 1]


def test_request_order_and_duplicates() -> None:
    backbone = inca.load_backbone("tiny-dinov2", precision="fp32", device="cpu")
    out = backbone.forward_taps(torch.randn(1, 3, 32, 32), ["final", "block.0", "final"])
    assert list(out) == ["final", "block.0"]


def test_other_image_sizes_interpolate_position_embeddings() -> None:
    backbone = inca.load_backbone("tiny-vit", image_size=48, precision="fp32", device="cpu")
    assert backbone.taps["block.0"].shape == (1 + 6 * 6, 32)
    out = backbone.forward_taps(torch.randn(2, 3, 48, 48), ["final"])
    assert out["final"].shape == (2, 37, 32)


def test_wrapped_classifier_uses_its_vision_tower() -> None:
    cfg = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        num_labels=3,
    )
    backbone = inca.load_backbone(ViTForImageClassification(cfg), precision="fp32")
    assert backbone.tap_names == ["embed", "block.0", "block.1", "final"]


def test_local_folder_and_saved_preprocessing(tmp_path) -> None:
    model = tiny_hf("vit")
    model.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(
        '{"image_mean": [0.1, 0.2, 0.3], "image_std": [0.5, 0.5, 0.5], "size": {"height": 40}}'
    )
    backbone = inca.load_backbone(str(tmp_path), precision="fp32")
    assert backbone.preprocess.mean == (0.1, 0.2, 0.3)
    assert backbone.preprocess.image_size == 40
    x = torch.randn(1, 3, 40, 40)
    ref = inca.load_backbone(model, image_size=40, precision="fp32").forward_taps(x, ["final"])
    torch.testing.assert_close(backbone.forward_taps(x, ["final"])["final"], ref["final"])


def test_prefix_tokens() -> None:
    assert inca.load_backbone("tiny-vit").num_prefix_tokens == 1
    assert inca.load_backbone("tiny-deit").num_prefix_tokens == 2


def test_weights_hash_identifies_weights() -> None:
    a = inca.load_backbone(tiny_hf("vit", seed=0), precision="fp32")
    b = inca.load_backbone(tiny_hf("vit", seed=0), precision="bf16")
    c = inca.load_backbone(tiny_hf("vit", seed=1), precision="fp32")
    assert a.weights_hash == b.weights_hash != c.weights_hash


def test_bf16_runs_close_to_fp32() -> None:
    x = torch.randn(2, 3, 32, 32)
    ref = inca.load_backbone("tiny-vit", precision="fp32").forward_taps(x, ["final"])["final"]
    for precision in ["bf16", "amp-bf16"]:
        bb = inca.load_backbone("tiny-vit", precision=precision)
        out = bb.forward_taps(x, ["final"])["final"]
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.1)


def test_outputs_carry_no_autograd() -> None:
    bb = inca.load_backbone("tiny-vit", precision="fp32")
    out = bb.forward_taps(torch.randn(1, 3, 32, 32, requires_grad=True), ["block.0"])
    assert not out["block.0"].requires_grad
    assert not any(p.requires_grad for p in bb.parameters())
    assert not bb.model.training


def test_bad_input_is_named() -> None:
    bb = inca.load_backbone("tiny-vit", precision="fp32")
    with pytest.raises(UnknownNameError, match="block.7.*valid taps: block.0"):
        bb.forward_taps(torch.randn(1, 3, 32, 32), ["block.7"])
    with pytest.raises(IncaError, match=r"\(B, 3, H, W\)"):
        bb.forward_taps(torch.randn(3, 32, 32))
    with pytest.raises(IncaError, match="multiple of the patch size 8"):
        bb.forward_taps(torch.randn(1, 3, 30, 30))
    with pytest.raises(IncaError, match="not a multiple of the backbone's patch size 8; use 32"):
        inca.load_backbone("tiny-vit", image_size=36)
    with pytest.raises(UnknownNameError, match="unknown backbone 'dinov3'.*dinov2-small"):
        inca.load_backbone("dinov3")
    with pytest.raises(IncaError, match="could not load the Hugging Face model"):
        inca.load_backbone("hf:/nonexistent/folder")
