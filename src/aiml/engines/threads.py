"""Blocking iterators (token generators) driven from the event loop, with prompt cancellation."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any, TypeVar

import anyio.to_thread

__all__ = ["iterate_in_thread"]

T = TypeVar("T")
_ITEM, _ERROR, _DONE = range(3)


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
                for item in iterator:
                    if stop.is_set():
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
