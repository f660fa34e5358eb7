"""Large JSON request bodies are parsed off the event loop.

FastAPI parses a route's JSON body with ``Request.json()`` on the event loop: the 3.1 MB body
of a depth-16 schema took 0.30-0.44 s of ``json.loads`` here while every other request
waited (issue 17, finding 9). Routes of :class:`ThreadedJsonRoute` (FastAPI's documented
custom ``APIRoute`` and ``Request`` classes) hand their handler a request whose ``json()``
parses a body of :data:`THREAD_FROM_BYTES` or more on a worker thread; a smaller one stays on
the loop, where its parse costs less than the thread hop. The errors are ``json.loads``'s own,
so FastAPI answers a malformed body as before.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

import anyio.to_thread
from fastapi import Request, Response
from fastapi.routing import APIRoute

__all__ = ["THREAD_FROM_BYTES", "ThreadedJsonRoute", "parse_json"]

#: Bodies this size or larger are parsed on a worker thread (~0.3-1 ms of parsing on the loop
#: at this size, against ~0.1 ms for the hop).
THREAD_FROM_BYTES = 64 * 1024


def parse_json(body: bytes) -> Any:
    return json.loads(body)


class _ThreadedJsonRequest(Request):
    _parsed: Any = None
    _has_parsed = False

    async def json(self) -> Any:
        if not self._has_parsed:
            body = await self.body()
            if len(body) >= THREAD_FROM_BYTES:
                self._parsed = await anyio.to_thread.run_sync(parse_json, body)
            else:
                self._parsed = parse_json(body)
            self._has_parsed = True
        return self._parsed


class ThreadedJsonRoute(APIRoute):
    """A route whose large JSON bodies are parsed on a worker thread."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def threaded(request: Request) -> Response:
            return await handler(_ThreadedJsonRequest(request.scope, request.receive))

        return threaded
