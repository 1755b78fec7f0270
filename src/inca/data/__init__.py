"""Datasets by name, reproducible train/val/test splits, preprocessing and loaders.

Typical use, with ``preprocess`` the backbone's ``Preprocess`` (image size, mean, std)::

    splits = make_splits("fashion-mnist", train_size=1000, val_size=0.1, seed=0)
    transform = ImageTransform(preprocess, augment=True, allow_hflip=True)
    for pixels, labels, indices in make_loader(splits.train, transform, shuffle=True):
        ...  # pixels (B, 3, S, S) float32, labels (B,), indices (B,) into splits.train.dataset
"""

from inca.data._files import IMAGE_EXTENSIONS, images_in
from inca.data.loader import Batch, make_loader
from inca.data.preprocess import ImageTransform
from inca.data.sources import (
    ArrayDataset,
    FileDataset,
    ImageDataset,
    list_datasets,
    load_dataset,
)
from inca.data.splits import Splits, Subset, make_splits, stratified_indices

__all__ = [
    "IMAGE_EXTENSIONS",
    "ArrayDataset",
    "Batch",
    "FileDataset",
    "ImageDataset",
    "ImageTransform",
    "images_in",
    "Splits",
    "Subset",
    "list_datasets",
    "load_dataset",
    "make_loader",
    "make_splits",
    "stratified_indices",
]
