"""Fashion-MNIST from its idx files, as shipped by Debian's ``dataset-fashion-mnist`` package.

idx format: big-endian uint32 magic, then one uint32 per dimension, then raw uint8 data. Images
have magic 2051 and dims (N, H, W) in a 16-byte header; labels magic 2049 and (N,) in 8 bytes.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np

from inca.errors import IncaError

ENV_VAR = "INCA_FASHION_MNIST_DIR"
DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
FILES = {  # split -> (images, labels) base names; a ".gz" suffix is optional on disk
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IMAGES_MAGIC, _LABELS_MAGIC = 2051, 2049
_FIX = (
    "install it with `sudo apt-get install dataset-fashion-mnist` or set "
    f"{ENV_VAR} to a folder holding the four *-ubyte.gz files"
)


def fashion_mnist_dir(root: str | os.PathLike | None = None) -> Path:
    """The folder to read: ``root`` if given, else ``$INCA_FASHION_MNIST_DIR``, else Debian's."""
    if root:
        return Path(root).expanduser()
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else DEFAULT_DIR


def _find(folder: Path, base: str) -> Path:
    for name in (base + ".gz", base):
        if (folder / name).is_file():
            return folder / name
    raise IncaError(f"Fashion-MNIST file {base}.gz not found in {folder}; {_FIX}")


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise IncaError(
            f"Fashion-MNIST file {path} is unreadable or corrupt ({exc}); "
            "replace it with an intact copy"
        ) from exc


def _parse_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    data = _read_bytes(path)
    header = 4 + 4 * ndim

    def corrupt(why: str) -> IncaError:
        return IncaError(f"Fashion-MNIST file {path} is corrupt: {why}; replace it")

    if len(data) < header:
        raise corrupt(f"only {len(data)} bytes, shorter than its {header}-byte header")
    found, *dims = struct.unpack(f">{1 + ndim}I", data[:header])
    if found != magic:
        raise corrupt(f"magic number {found}, expected {magic}")
    expected = header + int(np.prod(dims))
    if len(data) != expected:
        raise corrupt(f"{len(data)} bytes, its header {dims} implies {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


@lru_cache(maxsize=4)
def _read_pair(images: Path, labels: Path, _stamp: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Decoded (images (N, 28, 28), labels (N,)) of one split, cached per process.

    ``_stamp`` (sizes and mtimes) is part of the cache key so a replaced file is read again.
    The arrays are read-only because every caller shares them.
    """
    x = _parse_idx(images, _IMAGES_MAGIC, 3)  # (N, H, W) uint8, read-only (frombuffer)
    y = _parse_idx(labels, _LABELS_MAGIC, 1).astype(np.int64)  # (N,)
    if len(x) != len(y):
        raise IncaError(
            f"Fashion-MNIST files disagree: {images} holds {len(x)} images but {labels} holds "
            f"{len(y)} labels; replace them with a matching set"
        )
    if len(y) and y.max() >= len(CLASS_NAMES):
        raise IncaError(f"Fashion-MNIST file {labels} is corrupt: label {y.max()} is not 0..9")
    y.setflags(write=False)
    return x, y


def read_fashion_mnist(
    split: str, root: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 of ``split`` ("train" or "test")."""
    folder = fashion_mnist_dir(root)
    if not folder.is_dir():
        raise IncaError(f"Fashion-MNIST folder {folder} does not exist; {_FIX}")
    paths = [_find(folder, base) for base in FILES[split]]
    stamp = tuple((p.stat().st_size, p.stat().st_mtime_ns) for p in paths)
    return _read_pair(*paths, stamp)
