"""What every run shares, with its defaults in one place: the backbone and how it runs, the
data and its split sizes. ``RunOptions`` (the main job) and ``CompareOptions`` (a comparison)
are this dataclass plus their own fields, so one is made from the other without copying
fields by hand, and their saved JSON stays flat (``run.json``, ``options.json``)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

DEFAULT_MODEL = "dinov2-small"
DEFAULT_DATA = "fashion-mnist"
MEASURED_IMAGE_SIZE = 112  # the benchmarks' size: what auto chooses for Fashion-MNIST


@dataclass(frozen=True)
class DataOptions:
    """model: backbone name (``inca models``); data: dataset (``inca datasets``); image_size:
    pixels, None for the backbone's own, or "auto": chosen from the data
    (``inca.recipes.data_fit``); train/val/test_size: the splits, None for the data's
    defaults (``inca.data.make_splits``; val a count or a fraction); precision, device: how
    the backbone runs; crop: the centred fraction of each side kept before resizing
    (``Preprocess.crop``)."""

    model: str = DEFAULT_MODEL
    data: str = DEFAULT_DATA
    image_size: int | str | None = "auto"
    train_size: int | str | None = None
    val_size: float | None = None
    test_size: int | None = None
    precision: str = "auto"
    device: str = "auto"
    crop: float = 1.0

    def backbone_options(self) -> dict[str, Any]:
        """The preprocessing options a backbone is loaded with beyond its size."""
        return {"crop": self.crop} if self.crop != 1.0 else {}

    def data_options(self) -> dict[str, Any]:
        """Just these fields, by name: to make another options class from this one."""
        return {f.name: getattr(self, f.name) for f in fields(DataOptions)}

    def resolved_image_size(self) -> int | None:
        """The image size in pixels ("auto" chosen from the data and printed, once)."""
        if self.image_size != "auto":
            return self.image_size
        from inca.recipes.data_fit import auto_image_size

        return auto_image_size(self.model, self.data, self.precision, self.device)


DATA_FIELDS = tuple(f.name for f in fields(DataOptions))
