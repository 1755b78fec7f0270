"""Stratified, seeded, reproducible subsets and train/val/test splits."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from inca.data import ArrayDataset, Subset, make_splits, stratified_indices
from inca.data._stratify import carve_indices
from inca.errors import IncaError


def shuffled_labels(counts: list[int], seed: int = 1) -> np.ndarray:
    labels = np.repeat(np.arange(len(counts)), counts)
    return np.random.default_rng(seed).permutation(labels)


def test_stratified_indices_proportional_sorted_reproducible():
    labels = shuffled_labels([50, 30, 20])
    picked = stratified_indices(labels, 10, seed=0)
    assert np.bincount(labels[picked]).tolist() == [5, 3, 2]
    assert picked.dtype == np.int64 and np.all(np.diff(picked) > 0)  # sorted, no repeats
    np.testing.assert_array_equal(picked, stratified_indices(labels, 10, seed=0))
    assert not np.array_equal(picked, stratified_indices(labels, 10, seed=1))


def test_stratified_indices_pinned():
    """Fixed splits must not move between versions: they name which images are test images."""
    labels = np.repeat(np.arange(3), [5, 3, 2])
    assert stratified_indices(labels, 5, seed=0).tolist() == [1, 2, 3, 6, 8]


def test_stratified_indices_keeps_rare_classes():
    labels = shuffled_labels([100, 1, 1, 1, 1])
    assert np.bincount(labels[stratified_indices(labels, 5)]).tolist() == [1, 1, 1, 1, 1]
    assert np.bincount(labels[stratified_indices(labels, 8)]).tolist() == [4, 1, 1, 1, 1]
    assert len(stratified_indices(labels, 3)) == 3  # fewer than classes: no guarantee, right size


def test_stratified_indices_edge_sizes():
    labels = shuffled_labels([3, 2])
    np.testing.assert_array_equal(stratified_indices(labels, 5), np.arange(5))
    assert len(stratified_indices(labels, 0)) == 0
    with pytest.raises(IncaError, match="cannot take 6 images"):
        stratified_indices(labels, 6)


def test_carving_never_takes_a_single_example():
    labels = np.array([0, 0, 0, 0, 1, 2, 2])
    kept, carved = carve_indices(labels, 3, seed=0)
    assert 4 in kept  # class 1 has one image: it stays on the training side
    assert set(np.unique(labels[kept])) == {0, 1, 2}
    assert len(carved) == 3 and not set(kept) & set(carved)
    with pytest.raises(IncaError, match="leaving one image of every class"):
        carve_indices(labels, 5)


def test_make_splits_disjoint_stratified_reproducible():
    splits = make_splits("digits", val_size=0.1, seed=0)
    train, val, test = splits.train, splits.val, splits.test
    assert train.dataset is val.dataset and test.dataset.split == "test"
    assert not set(train.indices) & set(val.indices)
    assert len(train) + len(val) == len(train.dataset) == 1258
    assert len(val) == 126 and len(test) == 539
    assert np.all(np.abs(val.class_counts() - 12.6) <= 1)  # ~10% of each class
    again = make_splits("digits", val_size=0.1, seed=0)
    for a, b in zip((train, val, test), (again.train, again.val, again.test), strict=True):
        np.testing.assert_array_equal(a.indices, b.indices)
    assert not np.array_equal(val.indices, make_splits("digits", seed=1).val.indices)
    assert splits.class_names == [str(d) for d in range(10)]


def test_make_splits_sizes_and_val_independent_of_train_size():
    full = make_splits("digits", val_size=50)
    small = make_splits("digits", train_size=100, val_size=50, test_size=30)
    np.testing.assert_array_equal(full.val.indices, small.val.indices)
    assert small.sizes() == {"train": 100, "val": 50, "test": 30}
    assert small.train.class_counts().tolist() == [10] * 10
    assert set(small.train.indices) <= set(full.train.indices)
    assert small.test.class_counts().tolist() == [3] * 10
    assert len(make_splits("digits", val_size=0).val) == 0  # explicitly no validation set


@pytest.mark.parametrize(
    "kwargs, why",
    [
        ({"train_size": 5000}, "train_size asks for 5000 images"),
        ({"val_size": 1.5}, "fraction between 0 and 1 or a whole count"),
        ({"val_size": "a lot"}, "must be a number"),
        ({"test_size": 0}, "test split of 'digits' would be empty"),
        ({"train_size": 0}, "train split"),
        ({"val_size": 1250}, "one per class"),
    ],
)
def test_make_splits_errors(kwargs, why):
    with pytest.raises(IncaError, match=why):
        make_splits("digits", **kwargs)


def test_make_splits_singleton_class_stays_in_train(tmp_path):
    lines = ["path,label"]
    for i, label in enumerate(["a"] * 8 + ["b"] * 8 + ["rare"]):
        Image.new("RGB", (4, 4)).save(tmp_path / f"{i}.png")
        lines.append(f"{i}.png,{label}")
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    splits = make_splits(f"csv:{tmp_path / 'd.csv'}", val_size=4)
    assert splits.train.class_counts()[2] == 1  # "rare": in neither val nor test
    assert splits.val.class_counts()[2] == 0 and splits.test.class_counts()[2] == 0
    assert splits.val.class_counts().tolist() == [2, 2, 0]


def test_subset_basics():
    ds = ArrayDataset(np.zeros((5, 2, 2), np.uint8), [0, 1, 0, 1, 1], ["x", "y"])
    sub = Subset(ds, [4, 0])
    assert len(sub) == 2 and sub.labels.tolist() == [1, 0] and sub.class_names == ["x", "y"]
    assert len(Subset.whole(ds)) == 5
    with pytest.raises(IncaError, match="positions 0..4"):
        Subset(ds, [5])
