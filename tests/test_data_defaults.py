"""A user's folder with no flags: every image, the folder's own splits or stratified 20% test and
15% validation with a few images of every class, counts that fit, and an image size that fits."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inca.data import make_splits
from inca.data._stratify import few_each, holdout_size
from inca.data.image_size import choose_image_size, typical_short_side
from inca.data.sources import load_dataset
from inca.errors import IncaError
from tests.test_data_sources import make_fashion


def folder(root: Path, counts: dict[str, int], size: tuple[int, int] = (6, 5)) -> Path:
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("L", size, i % 256).save(root / cls / f"{i}.png")
    return root


def per_class(subset) -> list[int]:
    return subset.class_counts().tolist()


def test_flat_folder_uses_every_image_with_stratified_test_and_val(tmp_path) -> None:
    root = folder(tmp_path / "d", {"a": 100, "b": 40, "c": 10})
    s = make_splits(f"imagefolder:{root}")
    assert sum(s.sizes().values()) == 150  # no image left out
    assert per_class(s.test) == [20, 8, 2]  # 20%, stratified
    assert len(s.val) == holdout_size(np.repeat([0, 1, 2], [80, 32, 8]), 0.15)
    assert per_class(s.val) == [12, 5, 1] and len(s.val) == 18  # 15% of the 120 left
    assert per_class(s.train) == [100 - 20 - 12, 40 - 8 - 5, 10 - 2 - 1]
    again = make_splits(f"imagefolder:{root}")
    assert np.array_equal(again.val.indices, s.val.indices)  # fixed seed: the same every time


def test_tiny_classes_keep_a_training_image_and_get_held_out_ones(tmp_path) -> None:
    root = folder(tmp_path / "d", {"big": 200, "two": 2, "three": 3, "five": 5, "one": 1})
    s = make_splits(f"imagefolder:{root}")
    names = s.class_names  # sorted: big, five, one, three, two
    train, val, test = per_class(s.train), per_class(s.val), per_class(s.test)
    assert all(n >= 1 for n in train)  # every class trains
    assert test[names.index("one")] == 0 and val[names.index("one")] == 0
    assert test[names.index("two")] == 1 and train[names.index("two")] == 1
    assert test[names.index("three")] == 1 and val[names.index("three")] == 1
    assert test[names.index("five")] == 1 and val[names.index("five")] == 1
    assert few_each(np.array([4, 10, 13, 500]), np.array([3, 9, 12, 499])).tolist() == [1, 2, 3, 3]


def test_train_val_test_folders_are_the_splits(tmp_path) -> None:
    root = tmp_path / "d"
    folder(root / "train", {"a": 20, "b": 10})
    folder(root / "validation", {"a": 4, "b": 3})
    folder(root / "test", {"a": 5, "b": 5})
    s = make_splits(f"imagefolder:{root}")
    assert s.sizes() == {"train": 30, "val": 7, "test": 10}
    val_paths = {s.val.dataset.paths[i].parent.parent.name for i in s.val.indices}
    assert val_paths == {"validation"}
    part = make_splits(f"imagefolder:{root}", val_size=4)  # a count takes part of val/
    assert len(part.val) == 4 and set(part.val.indices) <= set(s.val.indices)
    with pytest.raises(IncaError, match=r"at most 7 \(--val-size 7\)"):
        make_splits(f"imagefolder:{root}", val_size=9)


def test_train_and_test_folders_carve_val_from_train(tmp_path) -> None:
    root = tmp_path / "d"
    folder(root / "train", {"a": 20, "b": 20})
    folder(root / "test", {"a": 5, "b": 5})
    s = make_splits(f"imagefolder:{root}")
    assert len(s.test) == 10 and len(s.val) == 6 and len(s.train) == 34


def test_train_and_val_folders_make_val_the_test_split(tmp_path) -> None:
    """ImageNet's layout: val/ is what the model is tested on; validation comes from train."""
    root = tmp_path / "d"
    folder(root / "train", {"a": 20, "b": 20})
    folder(root / "val", {"a": 5, "b": 5})
    s = make_splits(f"imagefolder:{root}")
    assert len(s.test) == 10 and {s.test.dataset.paths[0].parent.parent.name} == {"val"}


def test_a_lone_train_folder_is_the_class_folders(tmp_path) -> None:
    folder(tmp_path / "d" / "train", {"a": 10, "b": 10})
    assert load_dataset(f"imagefolder:{tmp_path / 'd'}").class_names == ["a", "b"]


def test_a_class_called_train_is_a_class(tmp_path) -> None:
    """PASCAL VOC and COCO have a class "train": beside other class folders it is one."""
    root = folder(tmp_path / "d", {"bus": 10, "car": 10, "train": 10})
    assert load_dataset(f"imagefolder:{root}").class_names == ["bus", "car", "train"]


def test_rule_one_rebuilds_splits_made_before_the_rule(tmp_path) -> None:
    """Runs and tasks from before record no split rule: rebuilt by rule 1, they get the very
    indices they had (a validation count carved at least one of each class, val/ beside test/
    ignored); new ones carve a few of each class."""
    root = tmp_path / "w"
    folder(root / "train", {"a": 40, "b": 9})
    folder(root / "val", {"a": 3, "b": 3})
    folder(root / "test", {"a": 5, "b": 5})
    old = make_splits(f"imagefolder:{root}", val_size=5, rule=1)
    assert per_class(old.val) == [4, 1] and len(old.train) == 44  # val/ ignored by rule 1
    assert old.val.indices.tolist() == [3, 11, 13, 20, 48]  # what the old code carved
    new = make_splits(f"imagefolder:{root}", val_size=5)
    assert per_class(new.val) == [3, 2]  # the data's own val/, a stratified 5 of its 6


def test_counts_that_do_not_fit_name_the_counts_that_do(tmp_path) -> None:
    root = folder(tmp_path / "d", {"a": 60, "b": 60})
    with pytest.raises(IncaError, match=r"asks for 10000 .* at most 82 \(--train-size 82\)"):
        make_splits(f"imagefolder:{root}", train_size=10_000)
    with pytest.raises(IncaError, match=r"at most 24 \(--test-size 24\)"):
        make_splits(f"imagefolder:{root}", test_size=100)
    assert len(make_splits(f"imagefolder:{root}", train_size="all").train) == 82
    assert len(make_splits(f"imagefolder:{root}", train_size=50).train) == 50


def test_fashion_mnist_keeps_its_measured_sizes(tmp_path) -> None:
    make_fashion(tmp_path, n_train=12_100, n_test=10)
    s = make_splits(f"fashion-mnist:{tmp_path}")
    assert s.sizes() == {"train": 10_000, "val": 2_000, "test": 10}


def test_csv_with_train_val_test_rows(tmp_path) -> None:
    for i in range(9):
        Image.new("L", (4, 4), i).save(tmp_path / f"{i}.png")
    split = ["train"] * 4 + ["val"] * 2 + ["test"] * 2 + ["train"]
    rows = ["path,label,split"] + [f"{i}.png,{'ab'[i % 2]},{split[i]}" for i in range(9)]
    (tmp_path / "l.csv").write_text("\n".join(rows) + "\n")
    s = make_splits(f"csv:{tmp_path / 'l.csv'}")
    assert s.sizes() == {"train": 5, "val": 2, "test": 2}


# --- the image size ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("side", "native", "patch", "size"),
    [(28, 224, 14, 112), (300, 224, 14, 224), (224, 224, 14, 224), (150, 224, 14, 154),
     (100, 224, 16, 112), (8, 32, 8, 16), (500, 518, 14, 504)],
)  # fmt: skip
def test_auto_image_size(side, native, patch, size) -> None:
    chosen, why = choose_image_size(side, native, patch)
    assert chosen == size and chosen % patch == 0 and why


def test_typical_short_side_is_per_image(tmp_path) -> None:
    root = folder(tmp_path / "d", {"a": 5, "b": 5}, size=(300, 200))
    assert typical_short_side(load_dataset(f"imagefolder:{root}")) == 200
    mixed = tmp_path / "m"
    for i, size in enumerate([(400, 100), (100, 400), (300, 300)]):
        folder(mixed, {f"c{i}": 2}, size=size)
    assert typical_short_side(load_dataset(f"imagefolder:{mixed}")) == 100


def test_auto_size_from_the_cli_prints_the_choice_and_cost(tmp_path, capsys) -> None:
    from inca.cli.options import resolve_image_size

    root = folder(tmp_path / "d", {"a": 5, "b": 5}, size=(20, 20))
    args = argparse.Namespace(model="tiny-vit", data=f"imagefolder:{root}", image_size="auto",
                              precision="fp32", device="cpu")  # fmt: skip
    resolve_image_size(args)
    assert args.image_size == 24  # 20 px images on tiny-vit's 8 px patches (native 32)
    out = capsys.readouterr().out
    assert "image size 24 px (auto)" in out and "GFLOP per image" in out


def test_single_image_classes_say_what_to_do_about_validation(tmp_path) -> None:
    root = tmp_path / "d"
    folder(root / "train", {"a": 1, "b": 1})
    folder(root / "test", {"a": 1, "b": 1})
    with pytest.raises(IncaError, match="single training image.*--val-size 0"):
        make_splits(f"imagefolder:{root}")
    assert len(make_splits(f"imagefolder:{root}", val_size=0).val) == 0


def test_imbalanced_classes_are_ranked_by_balanced_accuracy_unless_told(tmp_path, capsys) -> None:
    from inca.cli.options import resolve_metric

    even = folder(tmp_path / "even", {"a": 10, "b": 7})
    uneven = folder(tmp_path / "uneven", {"a": 30, "b": 10, "c": 12})
    for data, metric, want in ((even, None, "accuracy"), (uneven, None, "balanced-accuracy"),
                               (uneven, "accuracy", "accuracy")):  # fmt: skip
        args = argparse.Namespace(data=f"imagefolder:{data}", metric=metric)
        resolve_metric(args)
        assert args.metric == want, data
    out = capsys.readouterr().out
    assert out.count("metric balanced-accuracy (auto)") == 1 and "'a' has 24" in out


def test_compare_takes_the_main_jobs_data_driven_defaults(tmp_path, capsys) -> None:
    from inca.cli import build_parser
    from inca.cli.compare_flags import compare_options
    from inca.cli.options import data_options_of, train_config

    root = folder(tmp_path / "d", {"a": 40, "b": 10, "c": 12}, size=(20, 20))
    common = ["--model", "tiny-vit", "--data", f"imagefolder:{root}", "--precision", "fp32",
              "--device", "cpu"]  # fmt: skip
    compare = compare_options(build_parser().parse_args(["compare", *common]), {})
    args = build_parser().parse_args(["train", *common])
    shared, frozen = data_options_of(args), train_config(args, frozen=True)
    assert {k: getattr(compare, k) for k in shared} == shared  # sizes, image size: the folder's
    assert compare.image_size == 24 and compare.train_size is None
    assert compare.frozen == frozen and frozen.metric == "balanced-accuracy"
    assert compare.train.metric == "balanced-accuracy"  # fine-tuning picks its rate by it too
