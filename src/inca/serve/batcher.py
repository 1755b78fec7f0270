"""Dynamic micro-batching: requests that arrive close together share one backbone pass.

Each backbone group has one :class:`MicroBatcher`: requests put their (already decoded and
preprocessed) images on its queue; one worker takes a batch (see ``_take_batch``: at once when
the queue is deep or nothing more is expected, else waiting up to ``max_wait_ms`` for the images
on their way), runs the pass in a thread of its own (the event loop keeps accepting requests
meanwhile), and hands each request back exactly its own rows. A request that timed out before
its batch ran is skipped; a full queue refuses new work at once (429) rather than letting
latency grow without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from torch import Tensor

from inca.serve.metrics import Metrics
from inca.serve.pool import BackboneGroup, Ranked


class QueueFull(Exception):
    """The group's queue holds ``max_queue`` images: the client should retry later."""


@dataclass
class Waits:
    """Where one request's time went in the batchers (seconds; see ``inca.serve.metrics``):
    the longest queue wait and pass of its parts, and the sum of its shares of the passes."""

    queue: float = 0.0
    pass_: float = 0.0
    compute: float = 0.0

    def add(self, other: Waits) -> None:
        self.queue, self.pass_ = max(self.queue, other.queue), max(self.pass_, other.pass_)
        self.compute += other.compute


@dataclass
class Item:
    """One request's images (n, 3, S, S), the tasks each asked for, and where its rows go;
    its times are filled in when its batch has run."""

    pixels: Tensor
    tasks: frozenset[str]
    future: asyncio.Future = field(repr=False)
    queued_at: float = 0.0  # the event loop's clock
    waits: Waits = field(default_factory=Waits)

    @property
    def rows(self) -> int:
        return len(self.pixels)


class MicroBatcher:
    def __init__(
        self,
        group: BackboneGroup,
        max_batch: int,
        max_wait_ms: float,
        max_queue: int,
        metrics: Metrics,
        pass_per_task: bool = False,
        coming: Callable[[], int] | None = None,
    ) -> None:
        """``coming``: how many images are on their way to a queue (requests being read or
        decoded: at least one image each); a batch waits for them, and for nothing else."""
        self.group, self.max_batch, self.max_wait = group, max_batch, max_wait_ms / 1000
        self.max_queue, self.metrics, self.pass_per_task = max_queue, metrics, pass_per_task
        self.coming = coming or (lambda: 0)
        self._items: deque[Item] = deque()  # waiting, in arrival order
        self._arrived = asyncio.Event()
        self.waiting = 0  # images queued, not yet taken into a batch
        self.running = 0  # images in the batch being computed
        self.last_batch = 1  # images in the previous batch: the load a moment ago
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"inca-{group.name}")
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def submit(
        self, pixels: Tensor, tasks: frozenset[str], waits: Waits | None = None
    ) -> list[dict[str, Ranked]]:
        """Per image {task: its ranked probabilities}, once its batch has run (its times added to
        ``waits``). Images beyond ``max_batch`` go as several items, in order."""
        if self.waiting + len(pixels) > self.max_queue:
            raise QueueFull(f"{self.waiting} images are waiting for backbone {self.group.name}")
        loop = asyncio.get_running_loop()
        items = [Item(chunk, tasks, loop.create_future(), loop.time())
                 for chunk in pixels.split(self.max_batch)]  # fmt: skip
        for item in items:
            self.waiting += item.rows
            self._items.append(item)
        self._arrived.set()
        self.metrics.queue_depth(self.group.name, self.waiting)
        try:
            parts = [await item.future for item in items]
        finally:
            for item in items:  # a cancelled request (timeout, disconnect): skip its rows
                if not item.future.done():
                    item.future.cancel()
        if waits is not None:
            for item in items:
                waits.add(item.waits)
        return [row for part in parts for row in part]

    def _expected(self, size: int) -> int:
        """Images worth waiting for: those on their way, or, under load, as many as the last
        batch had (the clients of that batch are sending their next requests)."""
        return min(self.max_batch, max(self.last_batch, size + self.coming()))

    async def _take_batch(self) -> list[Item]:
        """Waiting items in arrival order, as many as fit in ``max_batch``. Goes at once when
        the batch is full (a deep queue) or nothing more is expected (light load: a lone
        request is not held back); otherwise waits for more, but never past ``max_wait`` after
        the first item arrived (so an item that queued during the last pass does not wait
        again)."""
        loop = asyncio.get_running_loop()
        while not self._items:
            self._arrived.clear()
            await self._arrived.wait()
        deadline = self._items[0].queued_at + self.max_wait
        batch = [self._items.popleft()]
        size = batch[0].rows
        while True:
            while self._items and size + self._items[0].rows <= self.max_batch:
                batch.append(self._items.popleft())
                size += batch[-1].rows
            left = deadline - loop.time()
            if self._items or size >= self._expected(size) or left <= 0:
                return batch
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), left)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._take_batch()
            taken = sum(i.rows for i in batch)
            self.waiting -= taken
            self.last_batch = taken
            self.metrics.queue_depth(self.group.name, self.waiting)
            live = [i for i in batch if not i.future.done()]
            if not live:
                continue
            pixels = torch.cat([i.pixels for i in live])  # (B, 3, S, S)
            wanted = [i.tasks for i in live for _ in range(i.rows)]
            self.running = len(pixels)
            begun, started = loop.time(), time.perf_counter()
            try:
                views_before = self.group.view_images
                rows = await loop.run_in_executor(
                    self._executor, self.group.run, pixels, wanted, self.pass_per_task
                )
                seconds = time.perf_counter() - started
                self.metrics.batch(len(pixels), seconds, self.group.view_images - views_before)
            except Exception as e:  # the batch's requests fail with it; the server goes on
                for i in live:
                    if not i.future.done():
                        i.future.set_exception(e)
                continue
            finally:
                self.running = 0
            start = 0
            for i in live:
                i.waits = Waits(begun - i.queued_at, seconds, seconds * i.rows / len(pixels))
                if not i.future.done():
                    i.future.set_result(rows[start : start + i.rows])
                start += i.rows

    @property
    def idle(self) -> bool:
        return self.waiting == 0 and self.running == 0

    async def close(self) -> None:
        """Finish what was accepted, then stop the worker and its thread."""
        while not self.idle:
            await asyncio.sleep(0.01)
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._executor.shutdown(wait=True)
