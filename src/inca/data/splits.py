"""Train / validation / test subsets of a dataset, stratified, seeded and reproducible.

Validation is carved from the official train split (never from test, so test stays untouched
for the final number); the official test split is kept apart and only optionally subsampled.
Same arguments, same indices: on every call, machine and run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inca.data._stratify import SPLIT_RULE, carve_indices, holdout_size, stratified_indices
from inca.data.sources import ImageDataset, default_sizes, load_dataset
from inca.errors import IncaError, warn

__all__ = ["ALL", "SPLIT_RULE", "Splits", "Subset", "make_splits", "stratified_indices"]


@dataclass(frozen=True, eq=False)
class Subset:
    """Some images of a dataset: ``indices`` (n,) int64 are positions into ``dataset``."""

    dataset: ImageDataset
    indices: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        indices = np.array(self.indices, dtype=np.int64)  # a copy: it is made read-only below
        if indices.ndim != 1 or (
            len(indices) and not 0 <= indices.min() <= indices.max() < len(self.dataset)
        ):
            raise IncaError(
                f"subset indices must be positions 0..{len(self.dataset) - 1} into "
                f"{self.dataset.name!r} ({self.dataset.split})"
            )
        indices.setflags(write=False)
        object.__setattr__(self, "indices", indices)

    @classmethod
    def whole(cls, dataset: ImageDataset) -> Subset:
        """Every image of ``dataset``."""
        return cls(dataset, np.arange(len(dataset)))

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def labels(self) -> np.ndarray:
        return self.dataset.labels[self.indices]  # (n,) int64

    @property
    def class_names(self) -> list[str]:
        return self.dataset.class_names

    def class_counts(self) -> np.ndarray:
        """Images per class, (num_classes,) int64 (zeros included)."""
        return np.bincount(self.labels, minlength=len(self.class_names))

    def __repr__(self) -> str:
        return f"Subset({self.dataset.name!r}, split={self.dataset.split!r}, n={len(self)})"


@dataclass(frozen=True)
class Splits:
    """The three subsets of one experiment; train and val share a dataset, test has its own."""

    train: Subset
    val: Subset
    test: Subset

    @property
    def class_names(self) -> list[str]:
        return self.train.class_names

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


ALL = "all"  # a train_size that keeps every image, whatever the source's default


def _count(value: float | int | str | None, total: int, what: str) -> int | None:
    """A whole count as is; a fraction 0 < f < 1 of ``total`` (at least 1); None stays None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise IncaError(f"{what} must be a number, got {value!r}")
    if value < 0 or (value > 1 and not float(value).is_integer()):
        raise IncaError(f"{what} must be a fraction between 0 and 1 or a whole count, got {value}")
    if 0 < value < 1:
        return max(1, round(float(value) * total))
    return int(value)


def _check_fits(count: int | None, available: int, what: str, why: str, hint: str = "") -> None:
    if count is not None and count > available:
        flag = "--" + what.replace("_", "-")
        raise IncaError(
            f"{what} asks for {count} images but only {available} are available ({why}); "
            f"ask for at most {available} ({flag} {available}){hint}"
        )


def _carve_val(
    dataset: ImageDataset,
    val_size: float | int | None,
    default: float | int,
    seed: int,
    rule: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(pool, val) positions into the train dataset: the validation split the data gives, or
    one carved stratified from it (by default ``default``: a fraction holds out a few images
    of every class at least, see ``holdout_size``)."""
    labels = dataset.labels
    given = dataset.fixed_val
    if given is not None:  # the data's own val/ split: all of it, or a stratified part
        pool = np.setdiff1d(np.arange(len(labels), dtype=np.int64), given, assume_unique=True)
        n_val = _count(val_size, len(given), "val_size")
        if n_val is None or n_val == len(given):
            return pool, given
        _check_fits(n_val, len(given), "val_size", "the size of the data's own val/ split")
        return pool, given[stratified_indices(labels[given], n_val, seed)]
    n_classes = len(np.unique(labels))
    if val_size is None and isinstance(default, float):
        return carve_indices(labels, holdout_size(labels, default, rule), seed, rule)
    n_val = _count(default if val_size is None else val_size, len(labels), "val_size") or 0
    why = f"{len(labels)} train images, one per class ({n_classes}) stays in train"
    _check_fits(n_val, len(labels) - n_classes, "val_size", why)
    return carve_indices(labels, n_val, seed, rule)


def make_splits(
    spec: str,
    train_size: int | str | None = None,
    val_size: float | int | None = None,
    test_size: int | None = None,
    seed: int = 0,
    rule: int = SPLIT_RULE,
) -> Splits:
    """Stratified train / val / test subsets of dataset ``spec``.

    None for a size means the source's default (``inca.data.sources.default_sizes``): every
    image of a user's folder, with 15% of its train split held out for validation (a few of
    every class at least); Fashion-MNIST's measured 10k / 2k.

    val_size: a fraction (0 < f < 1) or a count, carved from the official train split
        stratified by class (never the last image of a class, so train keeps every class); 0
        means no validation set (an empty ``val``). A validation split the data gives itself
        (``val/`` beside ``test/``) is used instead of carving; a count then takes part of it.
    train_size: how many of the remaining training images to keep (stratified); "all" keeps
        every one.
    test_size: a stratified subsample of the official test split; None keeps all of it.
    seed: drives every random choice. Changing ``train_size`` or ``test_size`` never changes
        ``val``, so results with different training budgets are validated on the same images.
    """
    defaults = default_sizes(spec)
    train_set = load_dataset(spec, "train", rule)
    test_set = load_dataset(spec, "test", rule)
    pool, val = _carve_val(train_set, val_size, defaults.val, seed, rule)  # (n_pool,), (n_val,)
    if train_size is None:
        train_size = defaults.train
    elif train_size == ALL:
        train_size = None
    n_train = _count(train_size, len(pool), "train_size")
    if n_train is not None and n_train > len(pool) and train_size == defaults.train:
        n_train = None  # the source's default is a cap: a smaller copy of it still loads
    _check_fits(n_train, len(pool), "train_size", f"the train split minus {len(val)} for val")
    if n_train is not None:
        pool = pool[stratified_indices(train_set.labels[pool], n_train, seed)]
    n_test = _count(test_size, len(test_set), "test_size")
    _check_fits(n_test, len(test_set), "test_size", "the size of the test split")
    test = np.arange(len(test_set))
    if n_test is not None:
        test = stratified_indices(test_set.labels, n_test, seed)
    splits = Splits(Subset(train_set, pool), Subset(train_set, val), Subset(test_set, test))
    if len(val) == 0 and val_size != 0:
        raise IncaError(
            f"no validation image can be held out of {spec!r}: every class has a single "
            "training image, and a class's last image stays in train; add images, give a val/ "
            "folder, or pass --val-size 0 to train without validation (selection is then blind)"
        )
    empty = [k for k, n in splits.sizes().items() if n == 0 and k != "val"]
    if empty:
        raise IncaError(
            f"the {' and '.join(empty)} split of {spec!r} would be empty "
            f"(sizes: {splits.sizes()}); ask for a size of at least 1"
        )
    check_classes(splits, spec)
    return splits


def check_classes(splits: Splits, spec: str) -> None:
    """Refuse data nothing can be learnt from; warn about data selection cannot judge well."""
    names = splits.class_names
    in_train = set(np.unique(splits.train.labels).tolist())
    if len(names) < 2 or len(in_train) < 2:
        raise IncaError(
            f"{spec!r} gives training images of {len(in_train)} class: a classifier needs two "
            "or more (with one, every accuracy is 100% and means nothing); add classes"
        )
    missing = [names[c] for c in range(len(names)) if c not in in_train]
    if missing:
        raise IncaError(
            f"class(es) {missing[:5]} of {spec!r} have no training image at these sizes, so no "
            "method can learn them; raise --train-size or add images of them"
        )
    n_val = len(splits.val)
    if n_val == 0:
        return
    in_val = set(splits.val.labels.tolist())
    absent = [names[c] for c in range(len(names)) if c not in in_val]
    if n_val < 2 * len(names):
        warn(
            f"the validation split has {n_val} image(s) for {len(names)} classes: choosing "
            "among adapters on it is mostly chance; raise --val-size (at least "
            f"{2 * len(names)})"
        )
    elif absent:
        if splits.train.dataset.fixed_val is not None:
            fix = "add images of them to the data's val/ split"
        elif all((splits.train.labels == names.index(c)).sum() < 2 for c in absent):
            fix = "each has a single training image, which stays in train: add images of them"
        else:
            fix = "raise --val-size"
        warn(f"class(es) {absent[:5]} have no validation image: selection cannot judge them; {fix}")


SCAN_LIMIT = 50_000  # images: above this the scan would cost more than it saves


def scan_images(splits: Splits, which: tuple[str, ...] = ("val", "test")) -> None:
    """Decode every image of the ``which`` splits now, so that a corrupt validation or test
    image stops the run before training, not after its first epoch. Skipped (with a note) when
    they hold more than ``SCAN_LIMIT`` images."""
    subsets = [getattr(splits, s) for s in which]
    total = sum(len(s) for s in subsets)
    if total > SCAN_LIMIT:
        print(f"not scanning {total} {'/'.join(which)} images up front (more than {SCAN_LIMIT})")
        return
    bad = [m for s in subsets for m in s.dataset.unreadable(s.indices)]
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise IncaError(f"{bad[0]}{more}; nothing was trained")


def absolute_spec(spec: str) -> str:
    """``spec`` with a relative path argument made absolute ("imagefolder:photos" ->
    "imagefolder:/home/me/photos"), so a saved task finds its data from any directory."""
    kind, colon, arg = spec.partition(":")
    if not colon or not arg or Path(arg).is_absolute() or not Path(arg).exists():
        return spec
    return f"{kind}:{Path(arg).resolve()}"


def data_record(spec: str, splits: Splits, seed: int, rule: int = SPLIT_RULE) -> dict[str, Any]:
    """What a saved task records of its data: enough to rebuild its splits exactly
    (``inca eval``), and fingerprints to refuse other data under the same name."""
    return {
        "data": spec,
        "data_resolved": absolute_spec(spec),
        "sizes": splits.sizes(),
        "seed": seed,
        "split_rule": rule,
        "fingerprint": splits.train.dataset.fingerprint(),
        "test_fingerprint": splits.test.dataset.fingerprint(),
    }
