"""Dynamic micro-batching: requests that arrive within a short window share one backbone pass.

Each backbone group has one :class:`MicroBatcher`: requests put their (already decoded and
preprocessed) images on its queue; one worker takes the first waiting request, lets others
join for up to ``max_wait_ms`` or until ``max_batch`` images, runs the pass in a thread of its
own (the event loop keeps accepting requests meanwhile), and hands each request back exactly
its own rows. A request that timed out before its batch ran is skipped; a full queue refuses
new work at once (429) rather than letting latency grow without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from torch import Tensor

from inca.serve.metrics import Metrics
from inca.serve.pool import BackboneGroup


class QueueFull(Exception):
    """The group's queue holds ``max_queue`` images: the client should retry later."""


@dataclass
class Item:
    """One request's images (n, 3, S, S), the tasks each asked for, and where its rows go."""

    pixels: Tensor
    tasks: frozenset[str]
    future: asyncio.Future = field(repr=False)

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
    ) -> None:
        self.group, self.max_batch, self.max_wait = group, max_batch, max_wait_ms / 1000
        self.max_queue, self.metrics, self.pass_per_task = max_queue, metrics, pass_per_task
        self._items: deque[Item] = deque()  # waiting, in arrival order
        self._arrived = asyncio.Event()
        self.waiting = 0  # images queued, not yet taken into a batch
        self.running = 0  # images in the batch being computed
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"inca-{group.name}")
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def submit(self, pixels: Tensor, tasks: frozenset[str]) -> list[dict[str, Tensor]]:
        """Per image {task: probabilities}, once its batch has run. Images beyond
        ``max_batch`` go as several items, in order."""
        if self.waiting + len(pixels) > self.max_queue:
            raise QueueFull(f"{self.waiting} images are waiting for backbone {self.group.name}")
        loop = asyncio.get_running_loop()
        items = [Item(chunk, tasks, loop.create_future())
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
        return [row for part in parts for row in part]

    async def _take_batch(self) -> list[Item]:
        """The first waiting item, and those that join it within the window (in arrival
        order; an item that would overflow the batch starts the next one)."""
        loop = asyncio.get_running_loop()
        while not self._items:
            self._arrived.clear()
            await self._arrived.wait()
        batch = [self._items.popleft()]
        size, deadline = batch[0].rows, loop.time() + self.max_wait
        while size < self.max_batch:
            if self._items:
                if size + self._items[0].rows > self.max_batch:
                    break
                batch.append(self._items.popleft())
                size += batch[-1].rows
                continue
            left = deadline - loop.time()
            if left <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._take_batch()
            taken = sum(i.rows for i in batch)
            self.waiting -= taken
            self.metrics.queue_depth(self.group.name, self.waiting)
            live = [i for i in batch if not i.future.done()]
            if not live:
                continue
            pixels = torch.cat([i.pixels for i in live])
            wanted = [i.tasks for i in live for _ in range(i.rows)]
            self.running = len(pixels)
            started = time.perf_counter()
            try:
                rows = await loop.run_in_executor(
                    self._executor, self.group.run, pixels, wanted, self.pass_per_task
                )
                self.metrics.batch(len(pixels), time.perf_counter() - started)
            except Exception as e:  # the batch's requests fail with it; the server goes on
                for i in live:
                    if not i.future.done():
                        i.future.set_exception(e)
                continue
            finally:
                self.running = 0
            start = 0
            for i in live:
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
