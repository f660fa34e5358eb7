"""The HTTP layer's routes: through ``HTTP_PROXY`` unless ``NO_PROXY``, and https through
httpx's own transport."""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import ssl
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from aiml.engines.remote.ollama import OllamaEngine
from aiml.engines.remote.proxies import ProxyEnvironment
from aiml.engines.remote.transport import FastTransport
from tests.engines.conftest import NO_PROXY, Serve
from tests.fakes.raw_http import RawServer, keep_alive, ok


async def test_plain_http_goes_through_the_proxy_in_absolute_form(
    serve: Serve,
    client: Callable[..., httpx.AsyncClient],
) -> None:
    proxy = await serve(keep_alive())
    http = client(
        "http://ollama.invalid:11434",
        proxies=ProxyEnvironment({"http": f"http://user:p%40ss@127.0.0.1:{proxy.port}"}),
    )
    assert (await http.post("/api/chat", json={})).json() == {"ok": True}
    line, *headers = proxy.requests[0].split(b"\r\n\r\n")[0].split(b"\r\n")
    headers = [header.lower() for header in headers]
    assert line == b"POST http://ollama.invalid:11434/api/chat HTTP/1.1"
    assert b"host: ollama.invalid:11434" in headers
    assert b"proxy-authorization: basic " + base64.b64encode(b"user:p@ss").lower() in headers


async def test_no_proxy_hosts_are_reached_directly(
    serve: Serve,
    client: Callable[..., httpx.AsyncClient],
) -> None:
    origin = await serve(keep_alive())
    proxy = await serve(keep_alive())
    env = {"http": f"http://127.0.0.1:{proxy.port}", "no": "localhost,127.0.0.0/8"}
    http = client(origin.url, proxies=ProxyEnvironment(env))
    assert (await http.get("/")).json() == {"ok": True}
    assert (len(origin.requests), len(proxy.requests)) == (1, 0)


async def test_the_engines_read_the_proxy_environment(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def tags(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await server.read_request(reader)
        writer.write(ok(b'{"models": [{"model": "llama2:7b", "name": "llama2:7b"}]}'))
        await writer.drain()

    proxy = await serve(tags)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.delenv("http_proxy", raising=False)
    monkeypatch.setenv("NO_PROXY", "elsewhere.example")
    engine = OllamaEngine("http://ollama.invalid:11434", timeout_s=2.0, connect_timeout_s=1.0)
    assert await engine.find_model("llama2:7b") == "llama2:7b"
    assert proxy.requests[0].startswith(b"GET http://ollama.invalid:11434/api/tags HTTP/1.1")
    await engine.aclose()


@pytest.mark.parametrize(
    ("no_proxy", "host", "port", "bypassed"),
    [
        ("*", "anything", 80, True),
        ("example.com", "api.example.com", 80, True),
        (".example.com", "example.com", 80, True),
        ("example.com", "notexample.com", 80, False),
        ("example.com:8080", "example.com", 80, False),
        ("example.com:8080", "example.com", 8080, True),
        ("10.0.0.0/8", "10.1.2.3", 80, True),
        ("10.0.0.0/8", "11.1.2.3", 80, False),
        (" localhost , ", "LOCALHOST", 80, True),
    ],
)
def test_no_proxy_matching(no_proxy: str, host: str, port: int, bypassed: bool) -> None:
    env = ProxyEnvironment({"http": "proxy:3128", "no": no_proxy})
    assert (env.proxy_for("http", host, port) is None) == bypassed
    if not bypassed:
        assert env.proxy_for("http", host, port) == "http://proxy:3128"


async def test_https_goes_through_httpx_own_transport(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TLS is httpx's (and Python's ssl): the lean transport hands https requests over."""
    cert, key = self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # httpx trusts it, as operators would
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    async with RawServer(keep_alive(), tls=context) as server:
        transport = FastTransport(proxies=NO_PROXY)
        async with httpx.AsyncClient(transport=transport, timeout=5) as http:
            response = await http.post(f"https://127.0.0.1:{server.port}/api/chat", json={})
        assert response.json() == {"ok": True}
        assert server.requests[0].startswith(b"POST /api/chat HTTP/1.1")


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own authority."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert, key_file = folder / "cert.pem", folder / "key.pem"
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key_file
