"""Exact views of an image: its rotations by 90 degrees and its mirror images (the dihedral group).

Where orientation carries no meaning (microscopy, astronomy, wafers, satellite tiles), every
rotation by 90 degrees and every mirror image of an image is the same object, so training may
show any of them and prediction may average over them. The views act on the preprocessed
square tensor (3, S, S): a rotation by 90 degrees or a flip only moves pixels (no
interpolation, nothing lost), and it commutes with the per-channel normalisation.

View ``k`` (0..7) of the dihedral group D4: rotate ``k % 4`` quarter turns counter-clockwise,
then mirror left-right when ``k >= 4``. The named sets:

    none      (0,)                 the image as it is
    flip      (0, 4)               and its mirror image
    rot90     (0, 1, 2, 3)         its four rotations
    dihedral  (0, 1, ..., 7)       all eight

Every set starts with view 0, the image itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from inca.errors import UnknownNameError

VIEW_SETS: dict[str, tuple[int, ...]] = {
    "none": (0,),
    "flip": (0, 4),
    "rot90": (0, 1, 2, 3),
    "dihedral": tuple(range(8)),
}


def views_of(name: str) -> tuple[int, ...]:
    """The views of the set ``name``; a clear error naming the sets otherwise."""
    if name not in VIEW_SETS:
        raise UnknownNameError("view set", name, list(VIEW_SETS),
                               hint="views act on orientation-free images")  # fmt: skip
    return VIEW_SETS[name]


def apply_view(pixels: Tensor, k: int) -> Tensor:
    """View ``k`` (0..7) of square images (..., S, S): exact, a copy unless k == 0."""
    if not 0 <= k < 8:
        raise ValueError(f"view {k} is not one of the 8 dihedral views (0..7)")
    out = torch.rot90(pixels, k % 4, dims=(-2, -1)) if k % 4 else pixels
    return out.flip(-1) if k >= 4 else out


def expand_views(pixels: Tensor, views: Sequence[int]) -> Tensor:
    """(B, 3, S, S) -> (V * B, 3, S, S), view-major: rows v*B..(v+1)*B-1 are ``views[v]``."""
    if tuple(views) == (0,):
        return pixels
    return torch.cat([apply_view(pixels, k) for k in views])


def random_views(pixels: Tensor, views: Sequence[int], generator: torch.Generator) -> Tensor:
    """Each image of (B, 3, S, S) in one of ``views``, drawn uniformly: training augmentation."""
    if len(views) == 1:
        return pixels
    drawn = torch.randint(len(views), (len(pixels),), generator=generator)
    out = pixels.clone()
    for i, k in enumerate(views):
        rows = (drawn == i).nonzero().flatten()
        if k and len(rows):
            out[rows] = apply_view(pixels[rows], k)
    return out


def mean_over_views(probs: Tensor, views: Sequence[int], wanted: Sequence[int]) -> Tensor:
    """(V * B, C) probabilities of the ``views`` (view-major) -> (B, C): the mean over the
    ``wanted`` views (each one of ``views``)."""
    stacked = probs.reshape(len(views), -1, probs.shape[-1])  # (V, B, C)
    if tuple(wanted) == tuple(views):
        return stacked.mean(0)
    rows = [list(views).index(k) for k in wanted]
    return stacked[rows].mean(0)


def union_views(sets: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """The views any of ``sets`` needs, view 0 first (one backbone pass over all of them)."""
    return tuple(sorted({0, *(k for s in sets for k in s)}))
