"""Request bytes -> checked, decoded images: sizes are refused before any pixel is decoded,
and decoding runs in a small bounded pool of its own (``Decoder``), off the event loop."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from PIL import Image

from inca.errors import IncaError

T = TypeVar("T")


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


class Decoder:
    """``workers`` threads that turn each request's image files into pixels, with at most
    ``max_images`` images accepted (waiting or being decoded) at a time.

    Why a pool of its own: Starlette's thread pool (up to 40 threads) let every waiting
    request decode at once, each thread taking CPU from the backbone pass; a few workers
    bound that, and a bounded backlog answers 429 at once instead of piling work up. Images
    keep their request's order; one image's error fails its own request only."""

    def __init__(self, workers: int, max_images: int,
                 on_depth: Callable[[int], None] | None = None) -> None:  # fmt: skip
        self.max_images = max_images
        self.on_depth = on_depth or (lambda n: None)
        self.images = 0  # accepted, waiting or being decoded
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="inca-decode")

    @staticmethod
    def _timed(work: Callable[[str, bytes], T], name: str, data: bytes) -> tuple[T, float, float]:
        """(work's result, when it started, its seconds), in a worker thread."""
        start = time.perf_counter()
        return work(name, data), start, time.perf_counter() - start

    async def run(self, work: Callable[[str, bytes], T], files: list[tuple[str, bytes]]
                  ) -> tuple[list[T], float, float]:  # fmt: skip
        """``work(name, bytes)`` of each file in order, the seconds the request waited for a worker
        and its images' decoding seconds (summed). 429 when the backlog is full; the first
        failing image's error (in request order) otherwise."""
        if self.images + len(files) > self.max_images:
            raise RequestError(
                429, f"{self.images} images are waiting to be decoded (the server's "
                f"--max-decoding is {self.max_images}); retry shortly"
            )  # fmt: skip
        loop, submitted = asyncio.get_running_loop(), time.perf_counter()
        self.images += len(files)
        self.on_depth(self.images)
        try:
            done = await asyncio.gather(
                *(loop.run_in_executor(self._executor, self._timed, work, name, data)
                  for name, data in files), return_exceptions=True,
            )  # fmt: skip
        finally:
            self.images -= len(files)
            self.on_depth(self.images)
        for d in done:
            if isinstance(d, BaseException):
                raise d
        first = min(started for _, started, _ in done)
        return [r for r, _, _ in done], first - submitted, sum(s for _, _, s in done)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
