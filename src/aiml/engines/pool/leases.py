"""What the pool hands out: a loaded model's entry and the leases on it (see model_pool.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Lease", "Loaded", "PoolEntry", "PoolKey"]

PoolKey = tuple[str, str, int]  # (engine, registered name, version)


@dataclass
class Loaded:
    """What a loader returns: the model object, what it costs, and how to free it."""

    handle: Any
    size_bytes: int
    close: Callable[[], None] = lambda: None
    #: The model's live counters (a batch scheduler's), for /metrics and the stats route.
    stats: Callable[[], Any] | None = None


@dataclass(eq=False)
class PoolEntry:
    key: PoolKey
    loaded: Loaded
    size_bytes: int
    loaded_at: float
    last_used: float
    leases: set[Lease] = field(default_factory=set)
    #: Per-model state engines keep beside the weights (a lock, a batcher); each one's
    #: ``aclose()`` is awaited before the model is closed, so it drains first.
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def users(self) -> int:
        return len(self.leases)

    @property
    def handle(self) -> Any:
        return self.loaded.handle


class Lease:
    """One holder's claim on a loaded model. Release it exactly when nothing uses the model
    any more (for work in a worker thread: when the thread has left it)."""

    __slots__ = ("_give_back", "entry", "holder")

    def __init__(
        self,
        give_back: Callable[[Lease], None],
        entry: PoolEntry,
        holder: asyncio.Task[Any] | None,
    ) -> None:
        #: The pool's bookkeeping for a released lease (a callable, so this module needs
        #: nothing of the pool's).
        self._give_back = give_back
        self.entry = entry
        #: The task that took the lease: shutdown cancels it so the work stops.
        self.holder = holder

    @property
    def handle(self) -> Any:
        return self.entry.handle

    @property
    def held(self) -> bool:
        return self in self.entry.leases

    def release(self) -> None:
        """Give the model back (idempotent; safe from a done-callback on the loop)."""
        if self.held:
            self._give_back(self)
