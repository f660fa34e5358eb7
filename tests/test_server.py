"""How ``aiml serve`` configures uvicorn."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import uvicorn
from fastapi import FastAPI

from aiml.server import uvicorn_config
from aiml.settings import Settings
from tests.fakes.servers import free_port

# httpx's (and Node's) default: a pooled connection idle this long is closed by the client.
CLIENT_KEEP_ALIVE_S = httpx.Limits().keepalive_expiry or 5.0


def test_the_server_outlasts_common_clients_idle_connections() -> None:
    """A server that closes idle connections as early as its clients races them: a client
    reusing a connection the server is closing gets no answer at all (seen in bench/soak as
    httpx ``ReadError``s). The server must keep them longer than clients do."""
    config = uvicorn_config(Settings(), FastAPI(), host="127.0.0.1")
    assert config.timeout_keep_alive > CLIENT_KEEP_ALIVE_S


def test_an_idle_keep_alive_connection_is_still_served_after_the_clients_expiry() -> None:
    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, bool]:
        return {"ok": True}

    config = uvicorn_config(Settings(port=free_port()), app, host="127.0.0.1")
    config.log_config = None
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:  # polls the condition, not a guessed delay
        assert thread.is_alive() and time.monotonic() < deadline
        time.sleep(0.01)
    request = f"GET /ping HTTP/1.1\r\nHost: 127.0.0.1:{config.port}\r\n\r\n".encode()
    try:
        with socket.create_connection(("127.0.0.1", config.port), timeout=10) as conn:
            conn.sendall(request)
            assert conn.recv(4096).startswith(b"HTTP/1.1 200")
            # The idle time is the condition under test: just past the client's own expiry.
            time.sleep(CLIENT_KEEP_ALIVE_S + 1)
            conn.sendall(request)
            assert conn.recv(4096).startswith(b"HTTP/1.1 200")
    finally:
        server.should_exit = True
        thread.join(timeout=10)
