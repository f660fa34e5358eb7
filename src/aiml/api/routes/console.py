"""The web console at ``/ui``, and the two read routes it needs besides the public API.

* ``GET /ui``: the page (no data in it); ``GET /ui/static/<build>/<path>``: its scripts,
  styles and vendored libraries, shipped in the package (nothing is fetched from elsewhere).
  ``<build>`` is a digest of every file, so the files are cached for a year and a new
  release is a new URL. Compressed with gzip once, on first use, for clients that accept it.
  Every answer carries a strict Content-Security-Policy: scripts and styles from aiml only,
  no inline code, no frames, no forms posting anywhere.
* ``GET /auth/whoami``: what the caller's key may do (``open`` without keys configured,
  ``user``, ``admin``), so the console shows admin actions only to admin keys. The
  ``Authentication`` middleware has already refused a missing or wrong key.
* ``GET /inference/traffic``: the last minutes of traffic (``observability/history.py``).

The console is only a client of aiml's API: every call it makes carries the key from the
tab's session storage in ``Authorization``, never a cookie (so no request forgery).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import html
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Request
from starlette.responses import Response

from aiml.observability.history import TrafficHistory

from ..deps import CallerDep
from ..responses import JSONResponse

__all__ = ["CSP", "STATIC_DIR", "router"]

STATIC_DIR = Path(__file__).resolve().parent.parent / "console" / "static"

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
_SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
_IMMUTABLE = "public, max-age=31536000, immutable"

router = APIRouter(tags=["console"])


@dataclass(frozen=True)
class Asset:
    body: bytes
    gzipped: bytes | None  # None when compressing does not make it smaller
    content_type: str


@dataclass(frozen=True)
class Bundle:
    build: str
    assets: dict[str, Asset]
    index: str  # index.html with {base} and {build} still to fill in


@functools.cache
def bundle(root: Path = STATIC_DIR) -> Bundle:
    """Every servable file under ``root``, read and compressed once (a few hundred KB)."""
    digest = hashlib.sha256()
    assets: dict[str, Asset] = {}
    for path in sorted(root.rglob("*")):
        content_type = _TYPES.get(path.suffix)
        if content_type is None or not path.is_file():
            continue
        name = path.relative_to(root).as_posix()
        body = path.read_bytes()
        digest.update(name.encode() + b"\0" + body)
        packed = gzip.compress(body, compresslevel=9, mtime=0)
        assets[name] = Asset(body, packed if len(packed) < len(body) else None, content_type)
    index = assets.pop("index.html").body.decode()
    return Bundle(build=digest.hexdigest()[:12], assets=assets, index=index)


def _accepts_gzip(request: Request) -> bool:
    return "gzip" in request.headers.get("accept-encoding", "").lower()


def _respond(request: Request, body: bytes, gzipped: bytes | None, content_type: str,
             cache: str) -> Response:  # fmt: skip
    headers = {**_SECURITY_HEADERS, "cache-control": cache, "vary": "accept-encoding"}
    if gzipped is not None and _accepts_gzip(request):
        headers["content-encoding"] = "gzip"
        body = gzipped
    return Response(body, media_type=content_type, headers=headers)


@router.get("/ui", include_in_schema=False)
@router.get("/ui/", include_in_schema=False)
async def page(request: Request) -> Response:
    """The console's page; it holds no data, so it needs no key."""
    b = bundle()
    base = html.escape(str(request.scope.get("root_path", "")).rstrip("/"), quote=True)
    text = b.index.replace("{base}", base).replace("{build}", b.build).encode()
    packed = gzip.compress(text, mtime=0) if _accepts_gzip(request) else None
    return _respond(request, text, packed, _TYPES[".html"], "no-cache")


@router.get("/ui/static/{build}/{path:path}", include_in_schema=False)
async def static(build: str, path: str, request: Request) -> Response:
    b = bundle()
    asset = b.assets.get(path)  # only files of the bundle: no path reaches the disk
    if asset is None:
        return Response(b"not found\n", status_code=404, media_type="text/plain",
                        headers=_SECURITY_HEADERS)  # fmt: skip
    # An older page asking for its build's file gets today's, but must not keep it.
    cache = _IMMUTABLE if build == b.build else "no-cache"
    return _respond(request, asset.body, asset.gzipped, asset.content_type, cache)


@router.get("/auth/whoami")
async def whoami(caller: CallerDep) -> JSONResponse:
    """What the caller's key may do: ``open`` (no keys configured: everything is open),
    ``user`` (API routes) or ``admin`` (admin routes too)."""
    return JSONResponse({"access": caller.access})


@router.get("/inference/traffic", tags=["inference"])
async def traffic(request: Request) -> JSONResponse:
    """The last 15 minutes of traffic, a point every 5 s: requests and errors per second by
    task/engine and status, p50/p99 latency and time to first token, tokens per second,
    queue depth, running requests and 429s per engine, registry lookups and the resolution
    cache's hit ratio. Each series is one column of values aligned with ``t`` (Unix
    seconds); ``null`` where there was nothing to measure."""
    history: TrafficHistory = request.app.state.history
    return JSONResponse({"success": True, **history.as_json()})
