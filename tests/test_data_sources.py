"""Dataset sources on small generated files: idx (Fashion-MNIST), image folders, CSVs, digits."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inca.data import ArrayDataset, list_datasets, load_dataset
from inca.data import sources as sources_module
from inca.errors import IncaError, UnknownNameError
from tests.conftest import require_or_skip

REAL_FASHION = Path("/usr/share/datasets/fashion-mnist")


# --- helpers -----------------------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    data = struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def make_fashion(folder: Path, n_train: int = 30, n_test: int = 10, gz: bool = True) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        ext = ".gz" if gz else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", x, 2051)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", y, 2049)
        out[split] = (x, y)
    return out


def save_image(path: Path, size=(6, 5), color=(10, 20, 30), fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)
    return path


def make_folder(root: Path, counts: dict[str, int], ext: str = ".png") -> list[Path]:
    paths = []
    for cls, n in counts.items():
        for i in range(n):
            paths.append(save_image(root / cls / f"{i}{ext}", color=(i * 20, len(cls), 7)))
    return paths


# --- fashion-mnist -----------------------------------------------------------------------------


def test_fashion_mnist_reads_generated_idx_files(tmp_path):
    arrays = make_fashion(tmp_path)
    train = load_dataset(f"fashion-mnist:{tmp_path}", "train")
    test = load_dataset(f"fashion-mnist:{tmp_path}", "test")
    assert (len(train), len(test)) == (30, 10)
    assert train.class_names[0] == "T-shirt/top" and train.class_names[9] == "Ankle boot"
    assert train.allow_hflip and train.labels.dtype == np.int64
    img = train.load(3)
    assert img.mode == "L" and img.size == (28, 28)
    np.testing.assert_array_equal(np.asarray(img), arrays["train"][0][3])
    np.testing.assert_array_equal(test.labels, arrays["test"][1])


def test_fashion_mnist_uncompressed_files_and_env_var(tmp_path, monkeypatch):
    make_fashion(tmp_path, gz=False)
    monkeypatch.setenv("INCA_FASHION_MNIST_DIR", str(tmp_path))
    assert len(load_dataset("fashion-mnist", "test")) == 10


def test_fashion_mnist_decoded_once_per_process(tmp_path):
    make_fashion(tmp_path)
    a = load_dataset(f"fashion-mnist:{tmp_path}")
    b = load_dataset(f"fashion-mnist:{tmp_path}")
    assert np.shares_memory(a.images, b.images)  # the lru_cache handed out the same array
    assert a.fingerprint() == b.fingerprint()


def test_fashion_mnist_missing_folder_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("INCA_FASHION_MNIST_DIR", str(tmp_path / "absent"))
    with pytest.raises(IncaError, match="sudo apt-get install dataset-fashion-mnist") as info:
        load_dataset("fashion-mnist")
    assert "INCA_FASHION_MNIST_DIR" in str(info.value)


@pytest.mark.parametrize(
    "damage, why",
    [
        ("garbage", "unreadable or corrupt"),
        ("cut-gz", "unreadable or corrupt"),
        ("magic", "magic number 9999"),
        ("truncated", "header"),
        ("count", "disagree"),
    ],
)
def test_fashion_mnist_corrupt_file_is_named(tmp_path, damage, why):
    make_fashion(tmp_path)
    images = tmp_path / "train-images-idx3-ubyte.gz"
    if damage == "garbage":
        images.write_bytes(b"this is not gzip at all")
    elif damage == "cut-gz":
        images.write_bytes(images.read_bytes()[:100])
    elif damage == "magic":
        write_idx(images, np.zeros((30, 28, 28), np.uint8), 9999)
    elif damage == "truncated":
        write_idx(images, np.zeros((30, 28, 28), np.uint8), 2051)
        images.write_bytes(gzip.compress(gzip.decompress(images.read_bytes())[:-5]))
    else:
        write_idx(images, np.zeros((29, 28, 28), np.uint8), 2051)
    with pytest.raises(IncaError, match=why) as info:
        load_dataset(f"fashion-mnist:{tmp_path}")
    assert "idx" in str(info.value)  # names the file (or files)


@pytest.mark.slow
def test_real_debian_fashion_mnist(monkeypatch):
    require_or_skip(
        REAL_FASHION.is_dir(),
        f"{REAL_FASHION} absent: `sudo apt-get install dataset-fashion-mnist` to run this",
    )
    monkeypatch.delenv("INCA_FASHION_MNIST_DIR", raising=False)
    train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    assert (len(train), len(test)) == (60000, 10000)
    assert train.num_classes == 10 and train.load(0).size == (28, 28)
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10


# --- digits ------------------------------------------------------------------------------------


def test_digits_fixed_disjoint_stratified_split():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert (len(train), len(test)) == (1258, 539)
    _, _, index = sources_module._digits_split()
    assert not set(index["train"]) & set(index["test"])
    assert len(set(index["train"]) | set(index["test"])) == 1797
    share = np.bincount(test.labels) / (np.bincount(test.labels) + np.bincount(train.labels))
    assert np.all(np.abs(share - 0.3) < 0.02)  # stratified: ~30% of every class
    assert not train.allow_hflip
    img = train.load(0)
    assert img.mode == "L" and img.size == (8, 8)
    assert np.asarray(img).max() <= 255 and train.images.max() == 255
    assert train.fingerprint() == load_dataset("digits", "train").fingerprint()
    assert train.fingerprint() != test.fingerprint()


def test_digits_takes_no_argument():
    with pytest.raises(IncaError, match="write just 'digits'"):
        load_dataset("digits:foo")


# --- imagefolder -------------------------------------------------------------------------------


def test_imagefolder_carves_fixed_stratified_test_split(tmp_path):
    make_folder(tmp_path, {"b": 10, "a": 5}, ext=".png")
    save_image(tmp_path / "c" / "only.JPG", fmt="JPEG")  # upper-case extension, single image
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    make_folder(tmp_path / ".hidden", {"x": 2})  # hidden folders are not classes
    train = load_dataset(f"imagefolder:{tmp_path}", "train")
    test = load_dataset(f"imagefolder:{tmp_path}", "test")
    assert train.class_names == ["a", "b", "c"]
    assert len(test) == 3 and len(train) == 13  # round(0.2 * 16)
    assert not set(train.paths) & set(test.paths)
    assert np.bincount(test.labels, minlength=3).tolist() == [1, 2, 0]  # c's only image: train
    assert train.load(0).mode == "RGB"
    again = load_dataset(f"imagefolder:{tmp_path}", "test")
    assert again.paths == test.paths and again.fingerprint() == test.fingerprint()


def test_imagefolder_with_train_and_val_folders(tmp_path):
    make_folder(tmp_path / "train", {"cat": 3, "dog": 2})
    make_folder(tmp_path / "val", {"cat": 1, "dog": 1})
    test = load_dataset(f"imagefolder:{tmp_path}", "test")
    assert len(load_dataset(f"imagefolder:{tmp_path}", "train")) == 5
    assert len(test) == 2 and all("val" in p.parts for p in test.paths)


def test_imagefolder_test_class_must_exist_in_train(tmp_path):
    make_folder(tmp_path / "train", {"cat": 2})
    make_folder(tmp_path / "test", {"cat": 1, "cow": 1})
    with pytest.raises(IncaError, match="cow"):
        load_dataset(f"imagefolder:{tmp_path}", "test")


def test_imagefolder_errors(tmp_path):
    with pytest.raises(IncaError, match="does not exist"):
        load_dataset(f"imagefolder:{tmp_path / 'nope'}")
    with pytest.raises(IncaError, match="no class folders"):
        load_dataset(f"imagefolder:{tmp_path}")
    with pytest.raises(IncaError, match="needs a path"):
        load_dataset("imagefolder")
    make_folder(tmp_path, {"full": 2})
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(IncaError, match=r"class folder .*empty holds no images"):
        load_dataset(f"imagefolder:{tmp_path}")


def test_unreadable_image_is_named(tmp_path):
    make_folder(tmp_path / "train", {"a": 2})
    make_folder(tmp_path / "test", {"a": 1})
    (tmp_path / "train" / "a" / "1.png").write_bytes(b"\x89PNG garbage, not an image")
    train = load_dataset(f"imagefolder:{tmp_path}", "train")
    assert train.load(0).size == (6, 5)
    with pytest.raises(IncaError, match=r"a/1\.png is unreadable or corrupt"):
        train.load(1)


def test_file_fingerprint_tracks_files_not_location(tmp_path):
    make_folder(tmp_path / "one", {"a": 3, "b": 3})
    first = load_dataset(f"imagefolder:{tmp_path / 'one'}").fingerprint()
    shutil.move(tmp_path / "one", tmp_path / "two")
    moved = load_dataset(f"imagefolder:{tmp_path / 'two'}")
    assert moved.fingerprint() == first  # paths are hashed relative to the dataset root
    st = moved.paths[0].stat()
    os.utime(moved.paths[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert moved.fingerprint() != first


# --- csv ---------------------------------------------------------------------------------------


def test_csv_with_split_column_and_numeric_labels(tmp_path):
    for name in ("x1", "x2", "x3", "x4"):
        save_image(tmp_path / "img" / f"{name}.png")
    absolute = save_image(tmp_path / "elsewhere" / "abs.bmp")
    (tmp_path / "list.csv").write_text(
        "path,label,split\n"
        "img/x1.png,10,train\nimg/x2.png,2,train\n"
        f"{absolute},2,train\nimg/x3.png,10,test\nimg/x4.png,2,val\n"
    )
    train = load_dataset(f"csv:{tmp_path / 'list.csv'}", "train")
    test = load_dataset(f"csv:{tmp_path / 'list.csv'}", "test")
    assert train.class_names == ["2", "10"]  # numeric order, not "10" < "2"
    # beside test rows, val rows are the validation split: inside train, as fixed_val
    assert train.labels.tolist() == [1, 0, 0, 0] and test.labels.tolist() == [1]
    assert train.fixed_val.tolist() == [3] and test.fixed_val is None
    assert train.paths[2] == absolute and train.load(2).size == (6, 5)


def test_csv_without_split_column_is_carved(tmp_path):
    lines = ["path,label"]
    for i in range(10):
        save_image(tmp_path / f"{i}.png")
        lines.append(f"{i}.png,{'cat' if i < 6 else 'dog'}")
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    train = load_dataset(f"csv:{tmp_path / 'd.csv'}", "train")
    test = load_dataset(f"csv:{tmp_path / 'd.csv'}", "test")
    assert (len(train), len(test)) == (8, 2)
    assert sorted(test.labels.tolist()) == [0, 1]
    assert not set(train.paths) & set(test.paths)


@pytest.mark.parametrize(
    "content, why",
    [
        ("", "lacks column"),
        ("file,class\na.png,x\n", "lacks column"),
        ("path,label\n", "no rows"),
        ("path,label\n,x\n", "line 2: empty path"),
        ("path,label,split\na.png,x,holdout\n", "line 2: split 'holdout'"),
    ],
)
def test_csv_errors(tmp_path, content, why):
    save_image(tmp_path / "a.png")
    (tmp_path / "d.csv").write_text(content)
    with pytest.raises(IncaError, match=why):
        load_dataset(f"csv:{tmp_path / 'd.csv'}")


def test_csv_missing_images_are_listed(tmp_path):
    rows = "".join(f"missing{i}.png,a\n" for i in range(7))
    (tmp_path / "d.csv").write_text("path,label\n" + rows)
    with pytest.raises(IncaError, match=r"7 missing image file\(s\): .*missing0\.png") as info:
        load_dataset(f"csv:{tmp_path / 'd.csv'}")
    assert "missing4.png" in str(info.value) and "missing6.png" not in str(info.value)
    with pytest.raises(IncaError, match="does not exist"):
        load_dataset(f"csv:{tmp_path / 'absent.csv'}")


def test_split_with_no_images_is_an_error(tmp_path):
    save_image(tmp_path / "a.png")
    (tmp_path / "d.csv").write_text("path,label,split\na.png,x,train\n")
    with pytest.raises(IncaError, match="test split .* is empty"):
        load_dataset(f"csv:{tmp_path / 'd.csv'}", "test")


# --- names, arrays -----------------------------------------------------------------------------


def test_unknown_dataset_and_split(tmp_path):
    with pytest.raises(UnknownNameError, match="unknown dataset 'cifar'") as info:
        load_dataset("cifar")
    assert "fashion-mnist" in str(info.value) and isinstance(info.value, KeyError)
    with pytest.raises(UnknownNameError, match=f"imagefolder:{tmp_path}"):
        load_dataset(str(tmp_path))  # a bare folder: the hint spells out the spec to use
    with pytest.raises(UnknownNameError, match="unknown split 'val'"):
        load_dataset("digits", "val")


def test_list_datasets():
    listing = dict(list_datasets())
    assert {"digits", "fashion-mnist[:DIR]", "imagefolder:PATH", "csv:FILE"} == set(listing)
    assert all(isinstance(d, str) and d for d in listing.values())


def test_array_dataset_checks_and_fingerprint():
    x = np.zeros((4, 5, 5, 3), np.uint8)
    ds = ArrayDataset(x, [0, 1, 1, 0], ["a", "b"])
    assert ds.load(1).mode == "RGB" and ds.load(1).size == (5, 5)
    other = ArrayDataset(x, [0, 1, 1, 1], ["a", "b"])
    assert ds.fingerprint() != other.fingerprint() and len(ds.fingerprint()) == 16
    with pytest.raises(IncaError, match="uint8"):
        ArrayDataset(x.astype(np.float32), [0, 1, 1, 0], ["a", "b"])
    with pytest.raises(IncaError, match="labels must be 0..1"):
        ArrayDataset(x, [0, 1, 2, 0], ["a", "b"])
