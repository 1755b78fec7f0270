"""ImageTransform: shapes, normalisation, resize policies, seeded augmentation."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from inca.backbones.preprocess_spec import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from inca.data import ImageTransform

MEAN = np.array(IMAGENET_MEAN, np.float32)[:, None, None]
STD = np.array(IMAGENET_STD, np.float32)[:, None, None]


def to_uint8(t: torch.Tensor) -> np.ndarray:
    """Undo the normalisation: (3, S, S) -> (S, S, 3) in 0..255."""
    return np.round((t.numpy() * STD + MEAN) * 255).transpose(1, 2, 0)


def bands(width: int = 48, height: int = 16) -> Image.Image:
    """Three vertical bands: red, green, blue, one third of the width each."""
    x = np.zeros((height, width, 3), np.uint8)
    third = width // 3
    x[:, :third, 0] = x[:, third : 2 * third, 1] = x[:, 2 * third :, 2] = 255
    return Image.fromarray(x)


def noise(size=(40, 30), seed=0) -> Image.Image:
    x = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(x)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "nearest"])
@pytest.mark.parametrize("resize", ["shorter-crop", "stretch"])
def test_constant_grey_image_is_normalised(resize, interpolation):
    tf = ImageTransform(Preprocess(16, resize=resize, interpolation=interpolation))
    out = tf(Image.new("L", (40, 30), 128))
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32 and out.is_contiguous()
    expected = (128 / 255 - MEAN) / STD  # (3, 1, 1)
    np.testing.assert_allclose(out.numpy(), np.broadcast_to(expected, (3, 16, 16)), atol=1e-6)


def test_rgb_channels_keep_their_own_statistics():
    pre = Preprocess(8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.125))
    out = ImageTransform(pre)(Image.new("RGB", (8, 8), (255, 0, 51)))
    np.testing.assert_allclose(out[:, 0, 0].numpy(), [1.0, -2.0, -2.4], atol=1e-6)


def test_shorter_crop_keeps_aspect_and_stretch_does_not():
    pre = Preprocess(12, interpolation="nearest")
    cropped = to_uint8(ImageTransform(pre)(bands()))  # wide: the centre square is all green
    assert np.all(cropped == [0, 255, 0])
    tall = to_uint8(ImageTransform(pre)(bands().rotate(90, expand=True)))  # 16 x 48, tall
    assert np.all(tall == [0, 255, 0])
    stretched = to_uint8(ImageTransform(replace(pre, resize="stretch"))(bands()))
    assert np.all(stretched[:, :4] == [255, 0, 0]) and np.all(stretched[:, 8:] == [0, 0, 255])
    assert np.all(stretched[:, 4:8] == [0, 255, 0])


def test_image_already_at_size_passes_through_exactly():
    img = noise((16, 16))
    out = to_uint8(ImageTransform(Preprocess(16))(img))
    np.testing.assert_array_equal(out, np.asarray(img))


def test_palette_and_alpha_images_become_rgb():
    p = Image.new("P", (10, 10), 3)
    p.info["transparency"] = b"\x00" * 256
    rgba = Image.new("RGBA", (10, 10), (1, 2, 3, 4))
    for img in (p, rgba, Image.new("LA", (10, 10))):
        assert ImageTransform(Preprocess(8))(img).shape == (3, 8, 8)


def test_augmentation_reproducible_under_a_seed():
    tf = ImageTransform(Preprocess(16), augment=True)
    img = noise()
    a = tf(img, torch.Generator().manual_seed(0))
    b = tf(img, torch.Generator().manual_seed(0))
    c = tf(img, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(3)
    d = tf(img)  # torch's global RNG when no generator is given
    torch.manual_seed(3)
    assert torch.equal(d, tf(img))
    assert not torch.equal(ImageTransform(Preprocess(16))(img), a)


@pytest.mark.parametrize("size", [(40, 30), (200, 10)])  # (200, 10): no crop fits, fallback
def test_random_boxes_respect_scale_ratio_and_bounds(size):
    tf = ImageTransform(Preprocess(16), augment=True)
    g = torch.Generator().manual_seed(0)
    w, h = size
    for _ in range(50):
        left, upper, right, lower = tf.random_box(w, h, g)
        assert 0 <= left < right <= w + 1e-9 and 0 <= upper < lower <= h + 1e-9
        cw, ch = right - left, lower - upper
        assert 3 / 4 - 1e-9 <= cw / ch <= 4 / 3 + 1e-9
        if size == (40, 30):
            assert 0.5 - 1e-9 <= cw * ch / (w * h) <= 1 + 1e-9


def test_hflip_only_when_allowed():
    draws = {}
    for allow in (True, False):
        tf = ImageTransform(Preprocess(16), augment=True, allow_hflip=allow)
        g = torch.Generator().manual_seed(0)
        draws[allow] = [tf.draw(40, 30, g)[1] for _ in range(40)]
    assert any(draws[True]) and not all(draws[True])
    assert not any(draws[False])


def test_flip_mirrors_the_image(monkeypatch):
    tf = ImageTransform(Preprocess(16), augment=True)
    img = noise((20, 20))
    monkeypatch.setattr(tf, "draw", lambda w, h, g: ((0, 0, w, h), False))
    plain = tf(img)
    monkeypatch.setattr(tf, "draw", lambda w, h, g: ((0, 0, w, h), True))
    assert torch.equal(tf(img), plain.flip(-1))
