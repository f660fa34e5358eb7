"""Streaming responses: NDJSON (aiml's and Ollama's) and server-sent events (OpenAI's)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.responses import StreamingResponse

__all__ = ["NDJSON", "SSE", "ndjson_line", "sse_event", "streaming_response"]

NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
# Proxies must pass each piece on as it comes.
_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def streaming_response(body: AsyncIterator[bytes], media_type: str) -> StreamingResponse:
    """A response that closes ``body`` when the client disconnects, stopping the engine."""
    return StreamingResponse(_closing(body), media_type=media_type, headers=_HEADERS)


def ndjson_line(payload: Any) -> bytes:
    return orjson.dumps(payload) + b"\n"


def sse_event(payload: Any) -> bytes:
    data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return b"data: " + data + b"\n\n"


async def _closing(body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        async for piece in body:
            yield piece
    finally:
        close = getattr(body, "aclose", None)
        if close is not None:
            await close()
