"""Defaults that come from the data: split sizes a dataset fixes, and ``--image-size auto``.

The commands that read a dataset (train, compare, cache, the benchmarks) resolve these once,
at their boundary, so saved options say what ran: Fashion-MNIST's measured 10k / 2k and 112 px,
a user's folder every image and the backbone's native size unless its images are smaller.
"""

from __future__ import annotations

from inca.backbones import load_backbone
from inca.backbones.cost import gflops_per_image
from inca.data import load_dataset
from inca.data.image_size import choose_image_size, typical_short_side
from inca.data.sources import default_sizes


def fixed_sizes(
    data: str, train_size: int | str | None, val_size: float | None
) -> tuple[int | str | None, float | None]:
    """(train_size, val_size) with the counts the dataset fixes (Fashion-MNIST's 10k / 2k) in
    place of None; data-driven defaults (a folder's every image, 15% for val) stay None, for
    make_splits."""
    defaults = default_sizes(data)
    if train_size is None:
        train_size = defaults.train
    if val_size is None and isinstance(defaults.val, int):
        val_size = defaults.val
    return train_size, val_size


def auto_image_size(model: str, data: str, precision: str = "auto", device: str = "auto") -> int:
    """The image size ``data`` should be read at by ``model`` (``inca.data.image_size``),
    printed with why and what an image costs at it and at the other candidate."""
    native = load_backbone(model, precision=precision, device=device)  # at its own size
    pre = native.preprocess
    side = typical_short_side(load_dataset(data, "train"))
    size, why = choose_image_size(side, pre.image_size, pre.patch_size)
    half, _ = choose_image_size(1, pre.image_size, pre.patch_size)  # the smallest candidate
    other_size = half if size == pre.image_size else pre.image_size
    costs = {}
    for s in dict.fromkeys([size, other_size]):
        backbone = (
            native
            if s == pre.image_size
            else load_backbone(model, precision=precision, device=device, image_size=s)
        )
        costs[s] = gflops_per_image(backbone)
    cost = f"{costs[size]:.3g} GFLOP per image"
    if other_size != size:
        cost += f" ({other_size} px: {costs[other_size]:.3g})"
    print(f"image size {size} px (auto): {why}; {cost}; --image-size N chooses another")
    return size


IMBALANCE_RATIO = 2.0  # largest class at least this many times the smallest: imbalanced


def auto_metric(data: str) -> str:
    """What ranks members on validation when the user names no ``--metric``: accuracy on data
    whose classes are about the same size, balanced accuracy (the mean recall per class) when
    the training images' largest class is ``IMBALANCE_RATIO`` times the smallest or more; there
    accuracy rewards answering the majority class. Printed with why when it is not accuracy."""
    import numpy as np

    dataset = load_dataset(data, "train")
    counts = np.bincount(dataset.labels, minlength=dataset.num_classes)
    smallest, largest = int(counts.min()), int(counts.max())
    if largest < IMBALANCE_RATIO * max(smallest, 1):
        return "accuracy"
    big = dataset.class_names[int(counts.argmax())]
    small = dataset.class_names[int(counts.argmin())]
    print(
        f"metric balanced-accuracy (auto): the classes are imbalanced ({big!r} has {largest} "
        f"training images, {small!r} {smallest}); --metric accuracy chooses accuracy"
    )
    return "balanced-accuracy"
