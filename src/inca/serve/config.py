"""How ``inca serve`` runs: batching, decoding, limits and access, in one checked object."""

from __future__ import annotations

from dataclasses import dataclass

from inca.errors import IncaError


@dataclass(frozen=True)
class ServeConfig:
    """max_batch: images in one backbone pass; max_wait_ms: how long a batch waits for the
    images on their way to join it (a lone request under light load does not wait; a deep
    queue goes at once); max_queue: images waiting per backbone before new requests get 429;
    decode_workers: threads that decode and preprocess images, off the event loop and beside
    the pass (each takes CPU from the pass: few); max_decoding: images waiting for or in
    decoding before new requests get 429; pass_threads: torch's threads for the passes (None:
    torch's default, one per core; set for the whole process); max_images: images in one
    request; max_image_bytes, max_pixels: per image (413 beyond); timeout_s: a request not
    answered by then gets 503; top_k: labels per task in a reply (a request may ask for others
    with ``?top_k=``); admin_token: enables loading and unloading tasks while serving (None:
    those routes do not exist); pass_per_task: every task on a backbone pass of its own (the
    baseline the shared pass is measured against, not for production)."""

    # measured on 2 cores, dinov2-small at 112 px, 32 one-image clients: a pass costs as much
    # per image at 16-32 as at 64 (so 64 buys nothing); waiting 20 ms lets a closed loop of 32
    # clients fill whole batches of 32 (5 ms: two half batches overlapping the HTTP work, ~8%
    # fewer images/s, within the noise of single runs); a second decode worker changed nothing
    # (0.3 ms per image) and one pass thread halved the throughput
    max_batch: int = 32
    max_wait_ms: float = 20.0
    max_queue: int = 256
    decode_workers: int = 1
    max_decoding: int = 64
    pass_threads: int | None = None
    max_images: int = 32
    max_image_bytes: int = 20 * 2**20
    max_pixels: int = 40_000_000
    timeout_s: float = 30.0
    top_k: int = 3
    admin_token: str | None = None
    pass_per_task: bool = False

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queue", "decode_workers", "max_decoding", "max_images",
                     "max_image_bytes", "max_pixels", "top_k"):  # fmt: skip
            if getattr(self, name) < 1:
                raise IncaError(f"serve: {name} must be at least 1, got {getattr(self, name)}")
        if self.pass_threads is not None and self.pass_threads < 1:
            raise IncaError(
                f"serve: pass_threads must be at least 1 (or None for torch's default), got "
                f"{self.pass_threads}"
            )
        if self.max_decoding < self.max_images:
            raise IncaError(
                f"serve: max_decoding ({self.max_decoding}) is below max_images "
                f"({self.max_images}): a request of max_images images could never be decoded; "
                "raise max_decoding or lower max_images"
            )
        if self.max_wait_ms < 0 or self.timeout_s <= 0:
            raise IncaError(
                f"serve: max_wait_ms must be >= 0 and timeout_s > 0, got {self.max_wait_ms} "
                f"and {self.timeout_s}"
            )
        if self.admin_token is not None and len(self.admin_token) < 8:
            raise IncaError("serve: the admin token must be at least 8 characters long")
