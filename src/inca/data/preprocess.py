"""PIL image -> normalised float tensor (3, S, S), as a backbone's ``Preprocess`` asks.

PIL, numpy and torch only (torchvision cannot be installed here). Each image costs one PIL
resize: the crop, random or central, is passed to ``Image.resize`` as its source box, so
cropping and scaling happen in one resampling pass. Grey images stay one channel through the
resize (a third of the work) and become three channels during normalisation.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from inca.backbones.preprocess_spec import Preprocess
from inca.errors import IncaError

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}
CROP_SCALE = (0.5, 1.0)  # random crop area, as a fraction of the image area
CROP_RATIO = (3 / 4, 4 / 3)  # random crop width / height
_CROP_TRIES = 10

Box = tuple[float, float, float, float]  # (left, upper, right, lower) in source pixels


class ImageTransform:
    """Resize, crop and normalise one PIL image into a float32 tensor (3, S, S).

    augment=False: deterministic, by ``preprocess.resize`` ("shorter-crop": shorter side to S and
    a centred square; "stretch": both sides to S). augment=True: a random crop of 50-100% of the
    area with aspect 3/4..4/3, scaled to S, then a horizontal flip with p=0.5 when
    ``allow_hflip`` (off where mirroring changes the class, e.g. digits). Randomness comes from
    ``generator`` if given, else torch's global RNG, which DataLoader seeds per worker.
    """

    def __init__(self, preprocess: Preprocess, augment: bool = False, allow_hflip: bool = True):
        self.preprocess, self.augment, self.allow_hflip = preprocess, augment, allow_hflip
        self.size = preprocess.image_size
        self._resample = _RESAMPLE[preprocess.interpolation]
        mean = np.asarray(preprocess.mean, dtype=np.float64)
        std = np.asarray(preprocess.std, dtype=np.float64)
        # (x / 255 - mean) / std  ==  x * scale + shift
        self._scale = (1 / (255 * std)).astype(np.float32)[:, None, None]  # (3, 1, 1)
        self._shift = (-mean / std).astype(np.float32)[:, None, None]  # (3, 1, 1)

    def __repr__(self) -> str:
        p = self.preprocess
        return (
            f"ImageTransform(size={self.size}, resize={p.resize!r}, "
            f"interpolation={p.interpolation!r}, augment={self.augment}, "
            f"allow_hflip={self.allow_hflip})"
        )

    def crop_box(self, width: int, height: int) -> Box:
        """The centred region ``preprocess.crop`` keeps (the whole image at crop 1)."""
        crop = self.preprocess.crop
        if crop == 1:
            return (0, 0, width, height)
        w, h = max(1, round(width * crop)), max(1, round(height * crop))
        left, upper = (width - w) // 2, (height - h) // 2  # whole pixels
        return (left, upper, left + w, upper + h)

    def fixed_box(self, width: int, height: int) -> Box:
        """The source region used without augmentation: within the crop, the whole (stretch)
        or the centred square (shorter-crop)."""
        x0, y0, x1, y1 = self.crop_box(width, height)
        width, height = x1 - x0, y1 - y0
        if self.preprocess.resize == "stretch":
            return (x0, y0, x1, y1)
        side = min(width, height)
        left, upper = (width - side) // 2, (height - side) // 2  # whole pixels: no half-pixel blur
        return (x0 + left, y0 + upper, x0 + left + side, y0 + upper + side)

    def random_box(self, width: int, height: int, generator: torch.Generator | None) -> Box:
        """A random region of 50-100% of the (cropped) area with aspect ratio 3/4..4/3."""
        x0, y0, x1, y1 = self.crop_box(width, height)
        left, upper, right, lower = self._random_box(x1 - x0, y1 - y0, generator)
        return (x0 + left, y0 + upper, x0 + right, y0 + lower)

    def _random_box(self, width: int, height: int, generator: torch.Generator | None) -> Box:
        area = width * height
        log_lo, log_hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
        for _ in range(_CROP_TRIES):
            u_area, u_ratio = torch.rand(2, generator=generator).tolist()
            target = area * (CROP_SCALE[0] + u_area * (CROP_SCALE[1] - CROP_SCALE[0]))
            ratio = math.exp(log_lo + u_ratio * (log_hi - log_lo))
            w, h = math.sqrt(target * ratio), math.sqrt(target / ratio)
            if w <= width and h <= height:
                break
        else:  # very elongated image: the whole image, trimmed to the nearest allowed aspect
            ratio = min(max(width / height, CROP_RATIO[0]), CROP_RATIO[1])
            w, h = min(width, height * ratio), min(height, width / ratio)
        u_x, u_y = torch.rand(2, generator=generator).tolist()
        left, upper = u_x * (width - w), u_y * (height - h)
        return (left, upper, left + w, upper + h)

    def draw(self, width: int, height: int, generator: torch.Generator | None) -> tuple[Box, bool]:
        """The region to resample and whether to mirror it."""
        if not self.augment:
            return self.fixed_box(width, height), False
        box = self.random_box(width, height, generator)
        flip = self.allow_hflip and bool(torch.rand(1, generator=generator).item() < 0.5)
        return box, flip

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        img = to_8bit(img)
        box, flip = self.draw(img.width, img.height, generator)
        s = self.size
        if img.size != (s, s) or box != (0, 0, s, s):
            img = img.resize((s, s), self._resample, box=box)
        pixels = np.asarray(img, dtype=np.float32)  # (S, S) grey or (S, S, 3)
        pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)  # (1|3, S, S)
        if flip:
            pixels = pixels[:, :, ::-1]
        out = np.empty((3, s, s), dtype=np.float32)
        np.multiply(pixels, self._scale, out=out)  # grey broadcasts to 3 channels here
        out += self._shift
        return torch.from_numpy(out)


def to_8bit(img: Image.Image, source: object = "image") -> Image.Image:
    """``img`` as 8-bit grey ("L") or RGB, its values scaled, not clipped.

    PIL's ``convert("RGB")`` clips 16-bit grey ("I;16", "I") at 255, so most pixels of a 16-bit
    PNG turn white, and maps float images ("F") in [0, 1] to black. Here 16-bit values are
    divided by 257 (65535 -> 255); 32-bit integers by what their maximum needs; floats in
    [0, 1] are multiplied by 255 and floats in [0, 255] kept. Anything else is refused."""
    if img.mode in ("L", "RGB"):
        return img
    if img.mode.startswith("I") or img.mode == "F":
        values = np.asarray(img, dtype=np.float64)
        if values.size and not np.isfinite(values).all():
            raise IncaError(f"{source} holds NaN or infinite pixel values; re-export it")
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if img.mode == "F" and low >= 0 and high <= 1:
            values = values * 255
        elif img.mode.startswith("I;16") or (img.mode == "I" and 255 < high <= 65535):
            values = values / 257
        elif low < 0 or high > 255:
            raise IncaError(
                f"{source} is a {img.mode!r} image with values in [{low:g}, {high:g}]; inca "
                "reads 8- and 16-bit images and floats in [0, 1] or [0, 255]: rescale it"
            )
        return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # PIL warns when P+transparency goes straight to RGB
    return img.convert("RGB")
