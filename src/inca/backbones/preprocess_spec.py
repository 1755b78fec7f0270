"""What the data layer must do to an image before a backbone can read it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from inca.errors import IncaError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_MODES = ("shorter-crop", "stretch")


MAX_IMAGE_SIZE = 1024


@dataclass(frozen=True)
class Preprocess:
    """Image size, normalisation and resize policy of a backbone.

    resize: "shorter-crop" scales the shorter side to ``image_size`` and centre-crops a square
    (keeps the aspect ratio); "stretch" scales both sides to ``image_size``.
    patch_size: when set, ``image_size`` must be a multiple of it (ViTs cut the image in patches).
    crop: the centred part of the image kept before resizing, as a fraction of each side (1: the
    whole image; 0.5: the middle half of the side, a quarter of the area), for small objects in
    the middle of a large frame. Saved with every task (``to_dict`` leaves it out at 1, so
    tasks and caches made before it compare equal) and applied the same way when serving.
    """

    image_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize: str = "shorter-crop"
    interpolation: str = "bicubic"
    patch_size: int | None = None
    crop: float = 1.0

    def __post_init__(self) -> None:
        if self.image_size < 1:
            raise IncaError(f"image_size must be positive, got {self.image_size}")
        if self.image_size > MAX_IMAGE_SIZE:  # a (S/14)^2-token attention would need many GB
            raise IncaError(
                f"image size {self.image_size} is beyond what inca supports ({MAX_IMAGE_SIZE} px: "
                "attention over so many tokens would need tens of GB); use a smaller --image-size"
            )
        if self.patch_size and self.image_size % self.patch_size:
            lo = max(self.patch_size, self.image_size // self.patch_size * self.patch_size)
            raise IncaError(
                f"image size {self.image_size} is not a multiple of the backbone's patch size "
                f"{self.patch_size}; use {lo} or {lo + self.patch_size}"
            )
        if self.resize not in RESIZE_MODES:
            raise IncaError(
                f"unknown resize mode {self.resize!r}; valid: {', '.join(RESIZE_MODES)}"
            )
        if self.interpolation not in ("bicubic", "bilinear", "nearest"):
            raise IncaError(
                f"unknown interpolation {self.interpolation!r}; valid: bicubic, bilinear, nearest"
            )
        if isinstance(self.crop, bool) or not 0.05 <= float(self.crop) <= 1:
            raise IncaError(
                f"crop keeps a fraction of each side in [0.05, 1], got {self.crop!r}; e.g. 0.5 "
                "keeps the middle half"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise IncaError("mean and std need 3 values each, std > 0")

    def with_size(self, image_size: int) -> Preprocess:
        return replace(self, image_size=int(image_size))

    def to_dict(self) -> dict:
        out = asdict(self)
        if out["crop"] == 1.0:  # as before crops existed: old tasks and caches stay equal
            del out["crop"]
        return out
