"""Backpressure: a bound on requests running per engine, a bounded queue, then 429."""

from __future__ import annotations

import asyncio

from aiml.errors import Overloaded

__all__ = ["Admission"]


class Admission:
    """At most ``limit`` requests run on an engine at once; ``queue`` more may wait.

    Past that a request is refused at once with 429 and ``Retry-After``, so overload shows
    as fast refusals rather than an unbounded pile of waiting requests and memory.
    """

    def __init__(self, engine: str, *, limit: int, queue: int) -> None:
        self.engine = engine
        self.limit = limit
        self.queue = queue
        self._slots = asyncio.Semaphore(limit)
        self.running = 0
        self.waiting = 0
        self.rejected = 0

    async def enter(self) -> None:
        """Take a slot, waiting in the queue if needed; raise :class:`Overloaded` if full."""
        if self._slots.locked():
            if self.waiting >= self.queue:
                self.rejected += 1
                raise Overloaded(
                    f"the {self.engine} engine is at capacity ({self.limit} running, "
                    f"{self.waiting} waiting); retry later"
                )
            self.waiting += 1
            try:
                await self._slots.acquire()
            finally:
                self.waiting -= 1
        else:
            await self._slots.acquire()
        self.running += 1

    def leave(self) -> None:
        self.running -= 1
        self._slots.release()
