"""A generation that has started, as the gate hands it out: its first chunk already read
(:class:`OpenStream`), then its chunks under the request's deadline, its call counted when
the stream ends, whatever ends it (:class:`StreamOutcome`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, cast

from aiml.observability.metrics import Metrics
from aiml.types import Generation, GenerationChunk, ResolvedModel

from .accounting import Accounting, deadline_error
from .tasks import Handler

__all__ = ["OpenStream", "StreamOutcome"]


class OpenStream:
    """A generation that has started: its first chunk is already in hand.

    Reading the first chunk before anything is sent means the errors engines raise at once
    (model not found, engine down) still get their own HTTP status, not a 200 stream.
    """

    def __init__(
        self,
        resolved: ResolvedModel,
        handler: Handler[Any],
        first: GenerationChunk | None,
        rest: AsyncIterator[GenerationChunk],
        on_error: Callable[[BaseException], None],
    ) -> None:
        self.resolved = resolved
        self._handler = handler
        self._first = first
        self._rest = rest
        self._on_error = on_error

    def shape(self, generation: Generation) -> dict[str, Any]:
        """The non-streaming ``result`` object for the finished generation."""
        return self._handler.shape(self.resolved, generation)

    async def chunks(self) -> AsyncIterator[GenerationChunk]:
        try:
            if self._first is not None:
                yield self._first
            async for chunk in self._rest:
                yield chunk
        except BaseException as exc:
            self._on_error(exc)
            raise
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Stop the generation (the client left): the engine is told at once."""
        close = getattr(self._rest, "aclose", None)
        if close is not None:
            await close()


#: Called with a stream's whole generation and its duration once it ended well (the gate
#: copies it to a shadow then, as it does a whole answer).
Finished = Callable[[Generation, float], None]


class StreamOutcome:
    """A started generation; iterate :meth:`chunks`, then read :attr:`final`. The stream's
    end, whatever it is, settles the call's accounting."""

    def __init__(
        self,
        opened: OpenStream,
        account: Accounting,
        deadline_at: float,
        metrics: Metrics,
        *,
        on_finished: Finished | None = None,
    ) -> None:
        self.resolved = opened.resolved
        self.final: Generation | None = None
        self._opened = opened
        self._account = account
        self._deadline_at = deadline_at
        self._metrics = metrics
        self._on_finished = on_finished

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._account.started

    def shape(self, generation: Generation) -> dict[str, Any]:
        """The non-streaming ``result`` object for the finished generation."""
        return self._opened.shape(generation)

    async def chunks(self) -> AsyncIterator[GenerationChunk]:
        """The text pieces; the final chunk (``done``) carries the whole generation."""
        pieces = cast(AsyncGenerator[GenerationChunk, None], self._opened.chunks())
        first = True
        try:
            while True:
                try:
                    # Read from a task spawned after open() returned (Starlette's): a thread
                    # started for a chunk is still the call's.
                    async with asyncio.timeout_at(self._deadline_at):
                        with self._account.owning_threads():
                            chunk = await anext(pieces)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise deadline_error() from None
                if first and chunk.text:
                    first = False
                    labels = (self._account.task, self._account.engine)
                    waited = self._account.first_token()
                    self._metrics.time_to_first_token.labels(*labels).observe(waited)
                if chunk.final is not None:
                    self.final = chunk.final
                yield chunk
        except BaseException as exc:
            self._account.settle(exc)
            raise
        else:
            self._account.finish(200, self.final)
            if self._on_finished is not None and self.final is not None:
                self._on_finished(self.final, self.elapsed)
        finally:
            await pieces.aclose()

    async def aclose(self) -> None:
        await self._opened.aclose()
        self._account.cancelled()
