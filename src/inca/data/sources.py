"""Datasets by name: ``load_dataset("fashion-mnist", "test")``, ``"imagefolder:PATH"``, ...

A dataset is one split ("train" or "test") of labelled images that loads one PIL image at a
time. Datasets without an official test split get a fixed one, carved stratified by class with
seed 0 (30% for ``digits``, 20% for ``imagefolder:`` and ``csv:`` without split information), so
the two splits never overlap and are the same on every machine. A class with a single image
stays in train: a carved test split only takes from classes with at least two images.
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from inca.data._fashion_mnist import CLASS_NAMES as FASHION_CLASSES
from inca.data._fashion_mnist import read_fashion_mnist
from inca.data._files import FileTable, read_csv_table, scan_imagefolder
from inca.data._stratify import SPLIT_RULE, carve_fraction
from inca.data.preprocess import to_8bit
from inca.errors import IncaError, UnknownNameError

SPLITS = ("train", "test")
FILES_TEST_FRACTION = 0.2  # imagefolder / csv without train/test information
DIGITS_TEST_FRACTION = 0.3
CARVE_SEED = 0
_FINGERPRINT_CHARS = 16  # 64 bits of sha256: plenty to tell datasets apart, short in file names


class ImageDataset(ABC):
    """One split of a labelled image dataset; ``load(i)`` gives image ``i`` as a PIL image.

    Attributes: ``name`` (the spec it was loaded from), ``split``, ``class_names``, ``labels``
    (N,) int64 indices into ``class_names``, and ``allow_hflip``, whether a mirrored image still
    belongs to its class (not so for digits), which augmentation needs to know.
    """

    name: str
    split: str
    class_names: list[str]
    labels: np.ndarray  # (N,) int64
    allow_hflip: bool
    fixed_val: np.ndarray | None = None  # (n_val,) positions the data gives as validation

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @abstractmethod
    def load(self, i: int) -> Image.Image:
        """Image ``i``, mode "L" or "RGB"."""

    @abstractmethod
    def fingerprint(self) -> str:
        """A short sha256 hex of exactly which images and labels these are (for cache keys)."""

    def unreadable(self, indices: Sequence[int]) -> list[str]:
        """Messages for images among ``indices`` that cannot be decoded (none: in memory)."""
        return []

    def image_size(self, i: int) -> tuple[int, int]:
        """(width, height) of image ``i``; subclasses answer without decoding the pixels."""
        return self.load(i).size

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, "
            f"n={len(self)}, classes={self.num_classes})"
        )


def _check_labels(labels: np.ndarray, n: int, class_names: Sequence[str]) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n,) or (n and labels.dtype.kind not in "iu"):
        raise IncaError(f"labels must be {n} integers, got shape {labels.shape} {labels.dtype}")
    if n and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise IncaError(
            f"labels run from {labels.min()} to {labels.max()} but there are "
            f"{len(class_names)} class names; labels must be 0..{len(class_names) - 1}"
        )
    out = labels.astype(np.int64)
    out.setflags(write=False)
    return out


def _digest(*parts: bytes | memoryview) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.hexdigest()[:_FINGERPRINT_CHARS]


class ArrayDataset(ImageDataset):
    """Images held in memory: uint8 (N, H, W) grey or (N, H, W, 3) RGB.

    The arrays are kept read-only (the fingerprint is computed once and must stay true).
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        class_names: Sequence[str],
        *,
        name: str = "array",
        split: str = "train",
        allow_hflip: bool = True,
    ) -> None:
        images = np.asarray(images)
        grey = images.ndim == 3
        if images.dtype != np.uint8 or not (grey or (images.ndim == 4 and images.shape[3] == 3)):
            raise IncaError(
                f"image arrays must be uint8 (N, H, W) or (N, H, W, 3), got {images.dtype} "
                f"{images.shape}; convert with np.clip(x, 0, 255).astype(np.uint8)"
            )
        self.images = np.ascontiguousarray(images).view()
        self.images.setflags(write=False)
        self.labels = _check_labels(labels, len(images), class_names)
        self.class_names = list(class_names)
        self.name, self.split, self.allow_hflip = name, split, allow_hflip
        self._fingerprint: str | None = None

    def load(self, i: int) -> Image.Image:
        return Image.fromarray(self.images[i])  # "L" for (H, W), "RGB" for (H, W, 3)

    def image_size(self, i: int) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[1])

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            meta = json.dumps([list(self.images.shape), self.class_names]).encode()
            self._fingerprint = _digest(
                b"array\0", meta, self.images.data, self.labels.astype("<i8").tobytes()
            )
        return self._fingerprint


class FileDataset(ImageDataset):
    """Images as files on disk, opened one at a time and converted to RGB.

    ``root``: the folder the fingerprint measures paths from, so moving a whole dataset folder
    keeps its fingerprint while renaming, resizing or touching a file changes it.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        labels: np.ndarray,
        class_names: Sequence[str],
        *,
        root: str | os.PathLike,
        name: str = "files",
        split: str = "train",
        allow_hflip: bool = True,
        fixed_val: np.ndarray | None = None,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        if fixed_val is not None:
            fixed_val = np.asarray(fixed_val, dtype=np.int64)
            fixed_val.setflags(write=False)
        self.fixed_val = fixed_val
        self.labels = _check_labels(labels, len(self.paths), class_names)
        self.class_names = list(class_names)
        self.root = Path(root)
        self.name, self.split, self.allow_hflip = name, split, allow_hflip

    def load(self, i: int) -> Image.Image:
        path = self.paths[i]
        try:
            with Image.open(path) as img:
                img.load()
                return to_8bit(img, f"image file {path}").convert("RGB")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise IncaError(
                f"image file {path} is unreadable or corrupt ({type(exc).__name__}: {exc}); "
                "replace or remove it"
            ) from exc

    def image_size(self, i: int) -> tuple[int, int]:
        """Read from the file's header: no pixel is decoded."""
        try:
            with Image.open(self.paths[i]) as img:
                return img.size
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            return self.load(i).size  # raises the clear unreadable-file error

    def unreadable(self, indices: Sequence[int]) -> list[str]:
        """Messages for the images among ``indices`` that cannot be decoded (each fully loaded:
        a truncated file passes a header check). In-memory datasets have none."""
        bad = []
        for i in indices:
            try:
                self.load(int(i))
            except IncaError as e:
                bad.append(str(e))
        return bad

    def fingerprint(self) -> str:
        """Hash of relative paths, sizes, mtimes and labels: cheap, reads no image content."""
        rows = []
        for path, label in zip(self.paths, self.labels.tolist(), strict=True):
            try:
                st = path.stat()
            except OSError as exc:
                raise IncaError(f"image file {path} has gone missing ({exc}); restore it") from exc
            rows.append(
                f"{os.path.relpath(path, self.root)}\t{st.st_size}\t{st.st_mtime_ns}\t{label}"
            )
        meta = json.dumps(self.class_names)
        if self.fixed_val is not None:  # which images validate is part of what the data is
            for i in self.fixed_val.tolist():
                rows[i] += "\tval"
        return _digest(b"files\0", meta.encode(), "\n".join(sorted(rows)).encode())


# --- the named sources -------------------------------------------------------------------------


def _load_fashion(arg: str, split: str, spec: str, rule: int) -> ImageDataset:
    images, labels = read_fashion_mnist(split, root=arg or None)  # (N, 28, 28), (N,)
    return ArrayDataset(images, labels, FASHION_CLASSES, name=spec, split=split)


@lru_cache(maxsize=1)
def _digits_split() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    from sklearn.datasets import load_digits  # imported here: sklearn is slow to import

    bunch = load_digits()
    images = np.round(bunch.images * (255 / 16)).astype(np.uint8)  # (1797, 8, 8), 0..16 -> 0..255
    labels = bunch.target.astype(np.int64)  # (1797,)
    train, test = carve_fraction(labels, DIGITS_TEST_FRACTION, CARVE_SEED)
    return images, labels, {"train": train, "test": test}


def _load_digits(arg: str, split: str, spec: str, rule: int) -> ImageDataset:
    if arg:
        raise IncaError(f"dataset 'digits' takes no argument, got {spec!r}; write just 'digits'")
    images, labels, index = _digits_split()
    keep = index[split]
    names = [str(d) for d in range(10)]
    return ArrayDataset(
        images[keep], labels[keep], names, name=spec, split=split, allow_hflip=False
    )


def _from_table(table: FileTable, split: str, spec: str, rule: int) -> ImageDataset:
    """The ``split`` of a file table. Without a test split in the files, a fixed stratified 20%
    is carved (seed 0). A validation split the files give (``val/`` beside ``test/``) travels
    inside the train dataset as ``fixed_val``: make_splits takes it instead of carving one.
    ``rule``: the split rule (``_stratify.SPLIT_RULE``); rule 1 rebuilds splits made before
    data-given validation splits and a few held-out images of every class."""
    role = table.role.copy() if table.role is not None else np.full(len(table.labels), "train")
    if rule < 2 and (role == "val").any():
        role[role == "val"] = "test" if table.legacy_val == "test" else "ignored"
    if not (role == "test").any():
        pool = np.flatnonzero(role == "train")
        _, test = carve_fraction(table.labels[pool], FILES_TEST_FRACTION, CARVE_SEED, rule)
        role[pool[test]] = "test"
    keep = (
        np.flatnonzero(role == "test")
        if split == "test"
        else np.flatnonzero((role == "train") | (role == "val"))
    )
    paths = [table.paths[i] for i in keep]
    fixed_val = np.flatnonzero(role[keep] == "val") if (role == "val").any() else None
    return FileDataset(
        paths, table.labels[keep], table.class_names, root=table.root, name=spec, split=split,
        fixed_val=fixed_val if split == "train" else None,
    )  # fmt: skip


def _needs_arg(kind: str, what: str, arg: str) -> str:
    if not arg:
        raise IncaError(f"dataset '{kind}' needs a {what}: write {kind}:{what.upper()}")
    return arg


def _load_imagefolder(arg: str, split: str, spec: str, rule: int) -> ImageDataset:
    table = scan_imagefolder(_needs_arg("imagefolder", "path", arg))
    return _from_table(table, split, spec, rule)


def _load_csv(arg: str, split: str, spec: str, rule: int) -> ImageDataset:
    return _from_table(read_csv_table(_needs_arg("csv", "file", arg)), split, spec, rule)


VAL_FRACTION = 0.15  # of the train split, a few images of every class at least


@dataclass(frozen=True)
class DefaultSizes:
    """The split sizes a source is used at when none are asked for. ``train``: a count, or None
    for every image; ``val``: a count or a fraction of the train split (a validation split that
    the data gives itself takes precedence over a fraction)."""

    train: int | None = None
    val: int | float = VAL_FRACTION


@dataclass(frozen=True)
class _Source:
    usage: str
    description: str
    load: Callable[[str, str, str, int], ImageDataset]  # (argument after ':', split, spec, rule)
    sizes: DefaultSizes = field(default_factory=lambda: DefaultSizes())


_SOURCES = {
    "fashion-mnist": _Source(
        "fashion-mnist[:DIR]",
        "Fashion-MNIST, 60k/10k 28x28 grey, 10 classes (Debian dataset-fashion-mnist or "
        "$INCA_FASHION_MNIST_DIR); used at 10k train / 2k val / 10k test unless sizes are given",
        _load_fashion,
        DefaultSizes(train=10_000, val=2_000),  # the main job's measured sizes
    ),
    "digits": _Source(
        "digits",
        "scikit-learn digits, 8x8 grey, 10 classes, fixed stratified 70/30 split (1258/539)",
        _load_digits,
    ),
    "imagefolder": _Source(
        "imagefolder:PATH",
        "a folder per class, or train/, val/ (or validation/) and test/ folders of class "
        "folders; otherwise a fixed stratified 20% test split and 15% of the rest for val",
        _load_imagefolder,
    ),
    "csv": _Source(
        "csv:FILE",
        "a CSV with header path,label[,split] (split: train, val, test); paths relative to "
        "the CSV; without split, a fixed stratified 20% test split and 15% of the rest for val",
        _load_csv,
    ),
}


def _source(spec: str) -> _Source:
    kind = spec.partition(":")[0]
    source = _SOURCES.get(kind.strip().lower())
    if source is None:
        valid = [s.usage for s in _SOURCES.values()]
        raise UnknownNameError("dataset", spec, valid, hint=_unknown_hint(spec))
    return source


def default_sizes(spec: str) -> DefaultSizes:
    """The split sizes dataset ``spec`` is used at when none are asked for."""
    return _source(spec).sizes


def list_datasets() -> list[tuple[str, str]]:
    """``(usage, description)`` per dataset source, e.g. ``("imagefolder:PATH", "...")``."""
    return [(s.usage, s.description) for s in _SOURCES.values()]


def _unknown_hint(spec: str) -> str:
    if Path(spec).expanduser().is_dir():
        return f"to read a folder of class folders, write imagefolder:{spec}"
    if spec.lower().endswith(".csv"):
        return f"to read a CSV of path,label rows, write csv:{spec}"
    return "your own images load as imagefolder:PATH (a folder per class) or csv:FILE"


def load_dataset(spec: str, split: str = "train", rule: int = SPLIT_RULE) -> ImageDataset:
    """The ``split`` ("train" or "test") of the dataset named by ``spec``.

    ``spec`` is a source name, optionally followed by ``:`` and an argument: ``fashion-mnist``,
    ``fashion-mnist:/data/fmnist``, ``digits``, ``imagefolder:PATH``, ``csv:FILE``. Validation
    images are not a split here: :func:`inca.data.make_splits` carves them from train.
    """
    if split not in SPLITS:
        raise UnknownNameError(
            "split", split, SPLITS, hint="validation images are carved from train by make_splits"
        )
    arg = spec.partition(":")[2]
    dataset = _source(spec).load(arg.strip(), split, spec, rule)
    if len(dataset) == 0:
        raise IncaError(
            f"the {split} split of dataset {spec!r} is empty; add images to it (a carved test "
            "split only takes from classes with at least two images)"
        )
    return dataset
