"""Running the app under uvicorn, with a graceful drain on SIGTERM.

On the first SIGTERM (or Ctrl-C) aiml stops taking work: readiness turns false and new
inference requests get 503 ``draining`` with ``Retry-After``, while the requests in flight
finish, for at most ``AIML_DRAIN_TIMEOUT_S``. Then uvicorn shuts down, the lifespan unloads
every model, and the process exits 0. A second signal stops at once.

Connections: a client must complete its request headers within ``AIML_HEADER_TIMEOUT_S``
(each head at most ``AIML_MAX_HEADER_BYTES`` and ``AIML_MAX_HEADERS`` fields), keep a body
coming (``AIML_BODY_TIMEOUT_S``, ``AIML_BODY_MIN_RATE``) and may hold at most
``AIML_MAX_CONNECTIONS_PER_CLIENT`` connections (:mod:`aiml.edge.connection_guard`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from aiml.api.app import create_app
from aiml.edge.connection_guard import ConnectionGuard
from aiml.observability.logging import configure_logging
from aiml.settings import Settings
from aiml.teams.database import has_keys

__all__ = ["run", "safe_host", "uvicorn_config"]

log = logging.getLogger("aiml")


def safe_host(settings: Settings, *, stored_keys: bool = False) -> str:
    """The address to bind: loopback only unless API keys (the environment's, or
    ``stored_keys`` in aiml's database) protect the service."""
    keyed = settings.api_keys.strip() or settings.admin_keys.strip() or stored_keys
    if keyed or _is_loopback(settings.host):
        return settings.host
    log.warning(
        "no API keys configured (AIML_API_KEYS, aiml keys): binding 127.0.0.1 instead of %s, "
        "so only "
        "this machine can reach aiml",
        settings.host,
    )
    return "127.0.0.1"


def run(settings: Settings) -> None:
    configure_logging(settings.log_format, settings.log_level)
    host = safe_host(settings, stored_keys=has_keys(settings.database))
    app = create_app(settings)
    config = uvicorn_config(settings, app, host=host)
    _DrainingServer(config, app, settings.drain_timeout_s).run()


def uvicorn_config(settings: Settings, app: Any, *, host: str) -> uvicorn.Config:
    # uvicorn has no header-read deadline, head size cap, body pace nor per-client cap; the
    # guard adds them around uvicorn's own HTTP protocol (httptools, which its default
    # http="auto" names when installed, as uvicorn[standard] does): see edge/connection_guard.py.
    guard = ConnectionGuard(
        header_timeout_s=settings.header_timeout_s,
        max_per_client=settings.max_connections_per_client,
        max_head_bytes=settings.max_header_bytes,
        max_headers=settings.max_headers,
        body_timeout_s=settings.body_timeout_s,
        body_min_rate=settings.body_min_rate,
    )
    return uvicorn.Config(
        guard.app(app),
        host=host,
        port=settings.port,
        http=guard.protocol(AutoHTTPProtocol),
        ws="none",  # no WebSocket routes: an upgrade never takes a connection from the guard
        log_config=None,  # ours, set by run()
        access_log=False,  # aiml logs each request itself, with its request id
        timeout_graceful_shutdown=max(1, int(settings.drain_timeout_s)),
        timeout_keep_alive=settings.keep_alive_s,
    )


class _DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: Any, drain_timeout_s: float) -> None:
        super().__init__(config)
        self._app = app
        self._drain_timeout_s = drain_timeout_s
        self._draining = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        services = getattr(self._app.state, "services", None)
        if self._draining or services is None or self._loop is None:
            super().handle_exit(sig, frame)  # a second signal, or nothing to drain yet
            return
        self._draining = True
        services.manager.draining = True
        self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._drain()))

    async def _drain(self) -> None:
        traffic = self._app.state.traffic
        log.info(
            "draining: not ready, %d request(s) in flight, waiting up to %.0fs",
            traffic.in_flight,
            self._drain_timeout_s,
        )
        if not await traffic.wait_idle(self._drain_timeout_s):
            log.warning("drain timeout: %d request(s) still in flight", traffic.in_flight)
        self.should_exit = True


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
