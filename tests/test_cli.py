"""The command line: each subcommand on tiny models and generated data; errors without traces."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

from inca.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def make_imagefolder(root, classes=("cat", "dog", "owl"), per_class=6):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}.png")
    return root


def test_models_lists_the_registry(capsys) -> None:
    code, out, _ = run(capsys, "models")
    assert code == 0 and "dinov2-small" in out and "tiny-vit" in out


def test_layers_prints_every_tap_with_shape(capsys) -> None:
    code, out, _ = run(capsys, "layers", "tiny-vit", "--image-size", "48", "--precision", "fp32")
    assert code == 0
    assert "6 taps" in out
    assert [ln.split() for ln in out.splitlines() if ln.strip().startswith("block.3")] == [
        ["block.3", "37", "32"]
    ]


def test_datasets_lists_sources(capsys) -> None:
    code, out, _ = run(capsys, "datasets")
    assert code == 0 and "imagefolder:PATH" in out and "fashion-mnist" in out


def test_extract_writes_features_that_match_the_backbone(capsys, tmp_path) -> None:
    folder = make_imagefolder(tmp_path / "imgs")
    out_dir = tmp_path / "feats"
    code, out, err = run(
        capsys, "extract", "--model", "tiny-dinov2", "--data", f"imagefolder:{folder}",
        "--val-size", "3", "--taps", "block.1,final", "--batch-size", "4", "--workers", "0",
        "--precision", "fp32", "--out", str(out_dir), "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    assert "img/s" in out
    tensors = load_file(str(out_dir / "features.safetensors"))
    meta = json.loads((out_dir / "features.json").read_text())
    n = meta["sizes"]["train"]
    assert tensors["tap.block.1"].shape == (n, 64)  # [CLS, mean] of width 32
    assert tensors["labels"].shape == (n,) and meta["class_names"] == ["cat", "dog", "owl"]
    assert meta["backbone"]["name"] == "tiny-dinov2"
    assert meta["throughput"]["images"] == n

    # the saved features are the backbone's own pooled tokens for those images
    import inca
    from inca.data import ImageTransform, load_dataset
    from inca.extract import pool_tokens

    bb = inca.load_backbone("tiny-dinov2", precision="fp32")
    ds = load_dataset(f"imagefolder:{folder}")
    i = int(tensors["indices"][0])
    pixels = ImageTransform(bb.preprocess)(ds.load(i))[None]
    expected = pool_tokens(bb.forward_taps(pixels, ["final"])["final"], 1)
    np.testing.assert_allclose(tensors["tap.final"][0].numpy(), expected[0].numpy(), atol=1e-5)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["layers", "nope"], "unknown backbone 'nope'"),
        (["extract", "--model", "tiny-vit", "--taps", "block.9"], "unknown tap 'block.9'"),
        (["extract", "--model", "tiny-vit", "--data", "mnist"], "unknown dataset 'mnist'"),
        (["layers", "tiny-vit", "--image-size", "30"], "not a multiple of the backbone's patch"),
    ],
)
def test_bad_input_gives_a_message_not_a_trace(capsys, argv, message) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert message in err and "Traceback" not in err
