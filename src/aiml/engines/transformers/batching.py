"""Dynamic batching: concurrent requests to one model share one forward pass."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import anyio.to_thread

__all__ = ["MicroBatcher"]

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass
class _Job(Generic[In, Out]):
    items: list[In]
    future: asyncio.Future[list[Out]] = field(default_factory=asyncio.Future)


class MicroBatcher(Generic[In, Out]):
    """Collects requests for up to ``max_wait_s`` (or ``max_batch`` items), runs them at once.

    ``run_batch`` is blocking (a model's forward pass) and runs in a worker thread, one batch
    at a time, so the model is never entered by two threads. Requests that arrive while a
    batch runs form the next batch, so under load batches fill without waiting at all.
    """

    def __init__(
        self, run_batch: Callable[[list[In]], list[Out]], *, max_batch: int, max_wait_s: float
    ) -> None:
        self._run_batch = run_batch
        self._max_batch = max(1, max_batch)
        self._max_wait_s = max(0.0, max_wait_s)
        self._queue: asyncio.Queue[_Job[In, Out]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self.batches = 0
        self.items = 0

    async def submit(self, items: Sequence[In]) -> list[Out]:
        if self._worker is None:
            self._worker = asyncio.ensure_future(self._work())
        job: _Job[In, Out] = _Job(list(items))
        await self._queue.put(job)
        return await job.future

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self._queue.get()]
            count = len(jobs[0].items)
            deadline = loop.time() + self._max_wait_s
            while count < self._max_batch:
                if self._queue.empty():
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        job = await asyncio.wait_for(self._queue.get(), remaining)
                    except TimeoutError:
                        break
                else:
                    job = self._queue.get_nowait()
                jobs.append(job)
                count += len(job.items)
            await self._run(jobs)

    async def _run(self, jobs: list[_Job[In, Out]]) -> None:
        items = [item for job in jobs for item in job.items]
        try:
            outputs: list[Out] = []
            for start in range(0, len(items), self._max_batch):
                chunk = items[start : start + self._max_batch]
                outputs.extend(await anyio.to_thread.run_sync(self._run_batch, chunk))
                self.batches += 1
        except Exception as exc:
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        self.items += len(items)
        offset = 0
        for job in jobs:
            if not job.future.done():  # a caller that went away is simply skipped
                job.future.set_result(outputs[offset : offset + len(job.items)])
            offset += len(job.items)
