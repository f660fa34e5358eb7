"""A model replica's stream batching (aiml.cluster.replica.batched): chunks that arrive
together go in one Ray item, no item follows another within the interval, an engine error
reaches the front after the chunks before it, and closing the stream stops the engine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from aiml.cluster.replica import batched


async def source(items: list[int], *, fail: bool = False) -> AsyncIterator[int]:
    for item in items:
        yield item
    if fail:
        raise RuntimeError("the engine failed")


async def test_chunks_that_arrive_together_go_in_one_item() -> None:
    assert [batch async for batch in batched(source([1, 2, 3, 4, 5]), 0)] == [[1, 2, 3, 4, 5]]


async def test_no_item_follows_another_within_the_interval() -> None:
    loop = asyncio.get_running_loop()
    release = asyncio.Event()

    async def slow() -> AsyncIterator[int]:
        yield 1
        await release.wait()
        yield 2
        yield 3

    sent: list[tuple[float, list[int]]] = []
    started = loop.time()
    async for batch in batched(slow(), 0.2):
        sent.append((loop.time(), batch))
        release.set()
    assert [batch for _, batch in sent] == [[1], [2, 3]]
    assert sent[0][0] - started >= 0.2 and sent[1][0] - sent[0][0] >= 0.2


async def test_an_engine_error_arrives_after_the_chunks_before_it() -> None:
    stream = batched(source([1, 2], fail=True), 0)
    assert await anext(stream) == [1, 2]
    with pytest.raises(RuntimeError, match="the engine failed"):
        await anext(stream)


async def test_closing_the_stream_stops_the_engine() -> None:
    stopped = asyncio.Event()
    waiting = asyncio.Event()

    async def endless() -> AsyncIterator[int]:
        try:
            yield 1
            waiting.set()
            await asyncio.Event().wait()  # a generation still running
            yield 2
        finally:
            stopped.set()

    stream = batched(endless(), 0)
    assert await anext(stream) == [1]
    await waiting.wait()
    await stream.aclose()
    assert stopped.is_set()
