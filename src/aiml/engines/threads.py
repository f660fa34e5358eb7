"""Blocking iterators (token generators, pages, audio pieces) driven from the event loop,
with prompt cancellation, and the worker threads each request still has running."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

import anyio.to_thread

__all__ = ["RunningThreads", "iterate_in_thread", "request_threads"]

T = TypeVar("T")
_ITEM, _ERROR, _DONE = range(3)


class RunningThreads:
    """The worker threads one request started, and what waits for the last one to stop.

    A request answered 504 (or whose client left) is over for its client at once, but its
    worker thread finishes the piece it is on (a page, a segment, a token): the request's
    admission slot is given back only then (:meth:`when_idle`), so "in flight" counts the
    work that really runs and the next request is admitted only to capacity really free.
    """

    def __init__(self) -> None:
        self.running = 0
        self._waiting: list[Callable[[], None]] = []

    def add(self, worker: asyncio.Future[Any]) -> None:
        self.running += 1
        worker.add_done_callback(self._stopped)

    def when_idle(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once no thread of the request runs (now, if none does)."""
        if self.running:
            self._waiting.append(callback)
        else:
            callback()

    def _stopped(self, _: asyncio.Future[Any]) -> None:
        self.running -= 1
        if not self.running:
            waiting, self._waiting = self._waiting, []
            for callback in waiting:
                callback()


#: The threads of the request being served (set by the inference gate; None outside it).
request_threads: ContextVar[RunningThreads | None] = ContextVar(
    "aiml_request_threads", default=None
)


async def iterate_in_thread(
    make_iterator: Callable[[], Iterator[T]], *, on_finished: Callable[[], None]
) -> AsyncGenerator[T, None]:
    """Run a blocking iterator in a worker thread and yield its items on the loop.

    Closing the returned iterator (the client hung up, the request was cancelled) stops the
    worker before its next item. ``on_finished`` runs on the event loop when the worker
    has left the iterator, not when the consumer stops, so whatever the iterator uses (a
    llama.cpp context, a slot in the model pool) is released only once it is truly free.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
    stop = threading.Event()

    def put(kind: int, value: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
        except RuntimeError:  # the loop is gone (shutdown): nobody is listening any more
            stop.set()

    def work() -> None:
        try:
            iterator = make_iterator()
            try:
                while not stop.is_set():  # before each item: a stopped run starts no more
                    try:
                        item = next(iterator)
                    except StopIteration:
                        break
                    put(_ITEM, item)
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()
        except BaseException as exc:
            put(_ERROR, exc)
        else:
            put(_DONE, None)

    worker = asyncio.ensure_future(anyio.to_thread.run_sync(work))
    worker.add_done_callback(lambda _: on_finished())
    threads = request_threads.get()
    if threads is not None:  # after on_finished: the model is free before the slot is
        threads.add(worker)
    try:
        while True:
            kind, value = await queue.get()
            if kind == _DONE:
                return
            if kind == _ERROR:
                raise value
            yield value
    finally:
        stop.set()
