"""Request bytes -> checked, decoded images: sizes are refused before any pixel is decoded."""

from __future__ import annotations

import io

from PIL import Image

from inca.errors import IncaError


class RequestError(IncaError):
    """What the client did wrong, with the HTTP status that says so."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def decode_image(data: bytes, name: str, max_bytes: int, max_pixels: int) -> Image.Image:
    """The decoded image of ``data`` (named ``name`` in errors): 413 over ``max_bytes`` or
    ``max_pixels`` (read from the header, before decoding), 400 when it is not a readable
    image."""
    if len(data) > max_bytes:
        raise RequestError(
            413, f"{name}: {len(data):,} bytes, over the limit of {max_bytes:,}; send a smaller "
            "file (the server's --max-image-bytes)"
        )  # fmt: skip
    if not data:
        raise RequestError(400, f"{name}: empty file; send an image (PNG, JPEG, ...)")
    try:
        img = Image.open(io.BytesIO(data))
        width, height = img.size
        if width * height > max_pixels:
            raise RequestError(
                413, f"{name}: {width}x{height} = {width * height:,} pixels, over the limit of "
                f"{max_pixels:,}; send a smaller image (the server's --max-pixels)"
            )  # fmt: skip
        img.load()
    except RequestError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise RequestError(400, f"{name}: not a readable image ({e})") from None
    return img
