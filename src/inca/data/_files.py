"""Find the image files of a user's own dataset: a folder per class, or a CSV of path,label.

These functions only list files and labels; ``sources.py`` turns the result into datasets and
carves a test split when the files do not come with one.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inca.errors import IncaError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
)  # compared lower-case
VAL_SPLIT_NAMES = ("val", "validation")
SPLIT_NAMES = ("train", "test", *VAL_SPLIT_NAMES)  # compared lower-case
ROLES = ("train", "val", "test")  # FileTable.role values


@dataclass
class FileTable:
    """Labelled image files of a dataset, before any split is carved."""

    root: Path  # fingerprints and messages use paths relative to it
    paths: list[Path]  # (N,)
    labels: np.ndarray  # (N,) int64 positions into class_names
    class_names: list[str]
    role: np.ndarray | None  # (N,) "train" | "val" | "test"; None when the files say nothing
    # what split rule 1 (before data-given validation splits) made of "val" images beside a
    # test split: "drop" (an image folder ignored its val/) or "test" (a CSV's val rows)
    legacy_val: str = "drop"


def held_out_roles(names: set[str]) -> dict[str, str]:
    """What the split names a dataset's files give mean: "test" is the test split and
    "val"/"validation" the validation split; with no "test", the held-out "val" split is the
    test split (ImageNet's train/ + val/), and validation is carved from train."""
    val_is_test = "test" not in names
    return {"train": "train", "test": "test"} | {
        v: "test" if val_is_test else "val" for v in VAL_SPLIT_NAMES
    }


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def images_in(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted, hidden files skipped."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and _visible(p)
    )


def _class_dirs(folder: Path) -> list[Path]:
    dirs = sorted(p for p in folder.iterdir() if p.is_dir() and _visible(p))
    if not dirs:
        raise IncaError(
            f"image folder {folder} has no class folders; put the images of each class in a "
            "sub-folder named after the class (e.g. cats/1.jpg, dogs/2.jpg)"
        )
    return dirs


def _scan_classes(folder: Path, class_names: list[str]) -> tuple[list[Path], list[int]]:
    paths: list[Path] = []
    labels: list[int] = []
    for d in _class_dirs(folder):
        if d.name not in class_names:
            raise IncaError(
                f"class folder {d} has no counterpart in the training folder; "
                f"add it there or remove it (training classes: {', '.join(class_names)})"
            )
        files = images_in(d)
        if not files:
            exts = ", ".join(sorted(IMAGE_EXTENSIONS))
            raise IncaError(
                f"class folder {d} holds no images ({exts}); add images or remove the folder"
            )
        paths += files
        labels += [class_names.index(d.name)] * len(files)
    return paths, labels


def scan_imagefolder(path: str | Path) -> FileTable:
    """One sub-folder per class (sorted names are the classes), or split folders of class
    folders: ``train/`` with ``test/`` and ``val/`` (or ``validation/``), as Hugging Face's
    imagefolder and per-split torchvision ImageFolder trees lay them out. ``train/`` with only
    ``val/`` makes ``val/`` the test split (ImageNet's layout); ``train/`` alone is the class
    folders. A root holding any folder besides these names is a folder per class (a class may
    be called "train"). Every split folder must hold class folders named like train's."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise IncaError(f"image folder {root} does not exist; check the path after 'imagefolder:'")
    subdirs = [d for d in sorted(root.iterdir()) if d.is_dir() and _visible(d)]
    split_dirs = {d.name.lower(): d for d in subdirs if d.name.lower() in SPLIT_NAMES}
    if "train" not in split_dirs or len(split_dirs) < len(subdirs):  # "train" is a class here
        class_names = [d.name for d in _class_dirs(root)]
        paths, labels = _scan_classes(root, class_names)
        return FileTable(root, paths, np.asarray(labels, dtype=np.int64), class_names, None)
    vals = [n for n in VAL_SPLIT_NAMES if n in split_dirs]
    if len(vals) > 1:
        raise IncaError(
            f"image folder {root} has both val/ and validation/; keep one as the validation "
            "split (merge or rename the other)"
        )
    class_names = [d.name for d in _class_dirs(split_dirs["train"])]
    meaning = held_out_roles(set(split_dirs))
    paths, labels, roles = [], [], []
    for name, folder in split_dirs.items():
        found, found_labels = _scan_classes(folder, class_names)
        paths += found
        labels += found_labels
        roles += [meaning[name]] * len(found)
    role = np.array(roles) if len(split_dirs) > 1 else None
    return FileTable(root, paths, np.asarray(labels, dtype=np.int64), class_names, role)


def _sort_names(names: set[str]) -> list[str]:
    """Sorted class names; numerically when all are integers, so "10" comes after "9"."""
    if all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=lambda n: (int(n), n))
    return sorted(names)


def read_csv_table(file: str | Path) -> FileTable:
    """Rows of ``path,label[,split]`` under a header; paths relative to the CSV's folder."""
    file = Path(file).expanduser()
    if not file.is_file():
        raise IncaError(f"CSV file {file} does not exist; check the path after 'csv:'")
    with open(file, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    header = [h.strip().lower() for h in rows[0]] if rows else []
    missing = [c for c in ("path", "label") if c not in header]
    if missing:
        raise IncaError(
            f"CSV file {file} lacks column(s) {', '.join(missing)} (first row: "
            f"{','.join(rows[0]) if rows else 'none'}); its first row must name the columns: "
            "path,label and optionally split"
        )
    col = {name: header.index(name) for name in ("path", "label", "split") if name in header}
    body = [(n, r) for n, r in enumerate(rows[1:], start=2) if any(c.strip() for c in r)]
    if not body:
        raise IncaError(f"CSV file {file} has no rows after its header; add one row per image")
    paths, names, splits = [], [], []
    for line, row in body:
        cells = {k: (row[i].strip() if i < len(row) else "") for k, i in col.items()}
        if not cells["path"] or not cells["label"]:
            raise IncaError(f"CSV file {file}, line {line}: empty path or label; fill it in")
        split = cells.get("split", "train").lower()
        if split not in ("train", "test", *VAL_SPLIT_NAMES):
            raise IncaError(
                f"CSV file {file}, line {line}: split {cells['split']!r} is not train, val "
                "(or validation) or test"
            )
        paths.append(file.parent / cells["path"])  # absolute paths stay absolute
        names.append(cells["label"])
        splits.append(split)
    absent = [p for p in paths if not p.is_file()]
    if absent:
        shown = ", ".join(str(p) for p in absent[:5])
        raise IncaError(
            f"CSV file {file} lists {len(absent)} missing image file(s): {shown}"
            f"{' ...' if len(absent) > 5 else ''}; fix the paths (relative ones are relative to "
            f"{file.parent})"
        )
    class_names = _sort_names(set(names))
    index = {n: i for i, n in enumerate(class_names)}
    labels = np.array([index[n] for n in names], dtype=np.int64)
    role = None
    if "split" in col:
        meaning = held_out_roles(set(splits))
        role = np.array([meaning[s] for s in splits])
    return FileTable(file.parent, paths, labels, class_names, role, legacy_val="test")
