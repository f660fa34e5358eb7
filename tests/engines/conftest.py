"""Fixtures for the HTTP layer's tests: raw servers and clients over FastTransport."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from aiml.engines.remote.proxies import ProxyEnvironment
from aiml.engines.remote.transport import FastTransport
from tests.fakes.raw_http import Handler, RawServer

NO_PROXY = ProxyEnvironment({})
Serve = Callable[[Handler], Awaitable[RawServer]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start raw servers; all are closed when the test ends, passed or not."""
    servers: list[RawServer] = []

    async def start(handler: Handler) -> RawServer:
        servers.append(await RawServer(handler).__aenter__())
        return servers[-1]

    yield start
    for server in servers:
        await server.__aexit__()


@pytest.fixture
async def client() -> AsyncIterator[Callable[..., httpx.AsyncClient]]:
    made: list[httpx.AsyncClient] = []

    def make(url: str, **transport: object) -> httpx.AsyncClient:
        transport.setdefault("proxies", NO_PROXY)
        made.append(
            httpx.AsyncClient(base_url=url, transport=FastTransport(**transport), timeout=2)  # type: ignore[arg-type]
        )
        return made[-1]

    yield make
    for c in made:
        await c.aclose()
