"""The input size a dataset should be read at (``--image-size auto``).

A backbone sees most at its native resolution (224 px for DINOv2-S): details a few pixels wide
in a 300 px image survive at 224 px and vanish at 112 px (measured in the README, "Your own
images"). Images smaller than that gain nothing from more pixels than they have, so they are
read at their own size rounded up to the patch grid, but never below half the native size:
a ViT at 28 px sees 2x2 patches (Fashion-MNIST's 28 px items are read at 112 px, as measured).
"""

from __future__ import annotations

import math

import numpy as np

from inca.data.sources import ImageDataset

SAMPLE = 200  # images whose sizes are read (headers only): enough for a median


def typical_short_side(dataset: ImageDataset, sample: int = SAMPLE) -> int:
    """The median shorter side, in pixels, of up to ``sample`` images spread over ``dataset``
    (per image: a mix of 400x100 and 100x400 images is 100 px, not 400)."""
    n = len(dataset)
    picks = np.unique(np.linspace(0, n - 1, num=min(n, sample)).round().astype(np.int64))
    sides = [min(dataset.image_size(int(i))) for i in picks]
    return int(np.median(sides))


def choose_image_size(short_side: int, native: int, patch: int | None) -> tuple[int, str]:
    """The size to read images whose shorter side is ``short_side`` px with a backbone of
    ``native`` px and ``patch`` px patches, and why (one clause, for the user)."""
    step = patch or 1
    if short_side >= native:
        return native, (
            f"the backbone's native resolution (the images' shorter side is {short_side} px, "
            "so a smaller size would discard detail)"
        )
    floor = max(step, round(native / 2 / step) * step)
    size = min(native, max(floor, math.ceil(short_side / step) * step))
    if size == floor and short_side < floor:
        why = (
            f"half the backbone's native {native} px: the images are {short_side} px, and "
            "fewer patches than this would leave the backbone too few tokens"
        )
    else:
        why = (
            f"the images' own size ({short_side} px) on the {step} px patch grid, below the "
            f"native {native} px: more pixels than the images hold add no detail"
        )
    return size, why
