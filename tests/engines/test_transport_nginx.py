"""The HTTP layer against a real HTTP server that is not Python: nginx.

Skipped where nginx is not installed (Debian: ``apt-get install -y nginx-light``). nginx
reports which connection served a request (``$connection``, ``$connection_requests``), so
reuse is seen from the server's side; ``return 444`` closes a connection without an answer
after reading the request, and the access log counts what reached the server.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from aiml.engines.remote.proxies import ProxyEnvironment
from aiml.engines.remote.transport import FastTransport
from tests.fakes.servers import free_port

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
)
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed")

CONFIG = """
{user}
worker_processes 1;
pid {root}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    log_format counted '$connection $connection_requests $request_method $request_uri $status';
    access_log {root}/access.log counted;
    client_body_temp_path {root}/tmp/body;
    proxy_temp_path {root}/tmp/proxy;
    fastcgi_temp_path {root}/tmp/fastcgi;
    uwsgi_temp_path {root}/tmp/uwsgi;
    scgi_temp_path {root}/tmp/scgi;
    keepalive_timeout 1s;
    default_type application/json;
    server {{
        listen 127.0.0.1:{port};
        root {root}/www;
        location = /conn {{
            return 200 '{{"connection": $connection, "requests": $connection_requests}}';
        }}
        location = /once {{
            if ($connection_requests = 2) {{ return 444; }}
            return 200 '{{"ok": true}}';
        }}
        location = /request-line {{ return 200 '$request'; }}
        location = /close-delimited.json {{
            gzip on;
            gzip_types application/json;
            gzip_min_length 0;
            chunked_transfer_encoding off;
        }}
        location = /chunked.json {{
            gzip on;
            gzip_types application/json;
            gzip_min_length 0;
        }}
    }}
}}
"""
BODY = b'{"text": "' + b"tokens " * 2000 + b'"}'


@dataclass
class Nginx:
    url: str
    log: Path

    def log_lines(self, uri: str) -> list[str]:
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        return [line for line in lines if f" {uri} " in line]

    def wait_for_log(self, uri: str, count: int) -> list[str]:
        deadline = time.monotonic() + 5
        while len(lines := self.log_lines(uri)) < count:  # written when a request ends
            assert time.monotonic() < deadline, lines
            time.sleep(0.01)
        return lines


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Nginx]:
    assert NGINX is not None
    port = free_port()
    for folder in ("tmp", "www"):
        (tmp_path / folder).mkdir()
    for name in ("close-delimited.json", "chunked.json", "static.json"):
        (tmp_path / "www" / name).write_bytes(BODY)
    user = "user root;" if os.geteuid() == 0 else ""  # workers must read tmp_path
    conf = tmp_path / "nginx.conf"
    conf.write_text(CONFIG.format(root=tmp_path, port=port, user=user))
    argv = [NGINX, "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "error.log")]
    process = subprocess.Popen([*argv, "-g", "daemon off;"])
    deadline = time.monotonic() + 10
    while True:  # until it accepts connections
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert process.poll() is None, (tmp_path / "error.log").read_text()
            assert time.monotonic() < deadline, "nginx did not start"
            time.sleep(0.02)
    yield Nginx(f"http://127.0.0.1:{port}", tmp_path / "access.log")
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
async def http(nginx: Nginx) -> AsyncIterator[httpx.AsyncClient]:
    transport = FastTransport(proxies=ProxyEnvironment({}))
    async with httpx.AsyncClient(base_url=nginx.url, transport=transport, timeout=5) as client:
        yield client


async def test_keep_alive_as_the_server_sees_it(http: httpx.AsyncClient) -> None:
    seen = [(await http.post("/conn", json={"n": n})).json() for n in range(5)]
    assert {s["connection"] for s in seen} == {seen[0]["connection"]}
    assert [s["requests"] for s in seen] == [1, 2, 3, 4, 5]


async def test_a_post_is_never_replayed(http: httpx.AsyncClient, nginx: Nginx) -> None:
    assert (await http.post("/once", json={})).json() == {"ok": True}
    with pytest.raises(httpx.RemoteProtocolError):
        await http.post("/once", json={})  # read by nginx, then the connection is cut
    assert [line.split()[-1] for line in nginx.wait_for_log("/once", 2)] == ["200", "444"]
    assert len(nginx.log_lines("/once")) == 2


async def test_a_get_on_a_cut_connection_is_retried_once(
    http: httpx.AsyncClient, nginx: Nginx
) -> None:
    assert (await http.get("/once")).status_code == 200
    assert (await http.get("/once")).json() == {"ok": True}  # 444, then a new connection
    assert [line.split()[-1] for line in nginx.wait_for_log("/once", 3)] == ["200", "444", "200"]


async def test_head_leaves_the_connection_usable(http: httpx.AsyncClient) -> None:
    head = await http.head("/static.json")
    assert (head.status_code, int(head.headers["content-length"]), head.content) == (
        200,
        len(BODY),
        b"",
    )
    assert (await http.get("/static.json")).content == BODY
    seen = (await http.get("/conn")).json()
    assert seen["requests"] == 3  # HEAD, GET and this one on one connection


async def test_chunked_and_close_delimited_bodies(http: httpx.AsyncClient) -> None:
    chunked = await http.get("/chunked.json")
    assert chunked.headers["transfer-encoding"] == "chunked"
    assert chunked.headers["content-encoding"] == "gzip"
    assert chunked.content == BODY
    first = (await http.get("/conn")).json()
    delimited = await http.get("/close-delimited.json")
    assert "content-length" not in delimited.headers
    assert "transfer-encoding" not in delimited.headers
    assert delimited.content == BODY  # ended by the close, then un-gzipped by httpx
    after = (await http.get("/conn")).json()
    assert after["connection"] != first["connection"]  # that connection ended with the body


async def test_a_connection_the_server_closed_while_idle_is_not_reused(
    http: httpx.AsyncClient, nginx: Nginx
) -> None:
    first = (await http.post("/conn", json={})).json()
    await asyncio.sleep(1.5)  # what is tested: nginx's 1 s keepalive_timeout passing
    second = (await http.post("/conn", json={})).json()  # a POST: it must not fail
    assert second["connection"] != first["connection"]


async def test_through_a_proxy_the_request_line_is_absolute(nginx: Nginx) -> None:
    proxies = ProxyEnvironment({"http": nginx.url})
    transport = FastTransport(proxies=proxies)
    async with httpx.AsyncClient(transport=transport, timeout=5) as client:
        response = await client.get("http://ollama.invalid:11434/request-line")
    assert response.text == "GET http://ollama.invalid:11434/request-line HTTP/1.1"
