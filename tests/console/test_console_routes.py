"""The console's routes without a browser: the page and its files (open, cached, gzipped,
under a strict CSP), ``/auth/whoami`` and ``/inference/traffic`` (behind the keys)."""

from __future__ import annotations

import gzip
import re
from collections.abc import Callable

import httpx
import pytest

from aiml.api.routes.console import CSP, STATIC_DIR, bundle
from tests.conftest import Registry, RunningAiml

USER = {"authorization": "Bearer user-key"}
FORBIDDEN = (
    "innerHTML",
    "dangerouslySetInnerHTML",
    "outerHTML",
    "eval(",
    "new Function",
    "document.write",
    "insertAdjacentHTML",
    "document.cookie",
)
ADMIN = {"authorization": "Bearer admin-key"}


@pytest.fixture
def aiml(start_aiml: Callable[..., RunningAiml], registry: Registry) -> RunningAiml:
    registry.register("llama2-7b-chat", "llama2:7b", alias="production")
    return start_aiml(api_keys="user-key", admin_keys="admin-key")


def test_the_page_and_its_files_are_open_cached_and_compressed(aiml: RunningAiml) -> None:
    with httpx.Client(base_url=aiml.url) as anonymous:
        page = anonymous.get("/ui", headers={"accept-encoding": "gzip"})
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert page.headers["content-encoding"] == "gzip"
        assert page.headers["content-security-policy"] == CSP
        assert page.headers["cache-control"] == "no-cache"
        assert anonymous.get("/ui/").text == page.text
        build = bundle().build
        sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert sources and all(
            s.startswith(f"/ui/static/{build}/") or s == "data:," for s in sources
        )
        assert "<script>" not in page.text and "style=" not in page.text  # nothing inline

        script = anonymous.get(f"/ui/static/{build}/vendor/preact.mjs")
        assert script.headers["content-type"] == "text/javascript; charset=utf-8"
        assert script.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert script.headers["content-encoding"] == "gzip"
        assert script.headers["content-security-policy"] == CSP
        packed = int(script.headers["content-length"])
        plain = (STATIC_DIR / "vendor" / "preact.mjs").read_bytes()
        assert packed < len(plain) / 2
        assert script.content == plain  # httpx decodes; the bytes are the shipped file
        raw = anonymous.get(
            f"/ui/static/{build}/console.css", headers={"accept-encoding": "identity"}
        )
        assert "content-encoding" not in raw.headers
        assert raw.content == (STATIC_DIR / "console.css").read_bytes()
        old = anonymous.get("/ui/static/0ld0ld0ld0ld/js/main.js")
        assert old.status_code == 200 and old.headers["cache-control"] == "no-cache"
        for missing in ("js/nope.js", "../routes/console.py", "vendor/README.md", "index.html"):
            assert anonymous.get(f"/ui/static/{build}/{missing}").status_code == 404, missing


def test_whoami_and_traffic_need_a_key_and_tell_its_access(aiml: RunningAiml) -> None:
    with httpx.Client(base_url=aiml.url) as client:
        assert client.get("/auth/whoami").status_code == 401
        wrong = client.get("/auth/whoami", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert client.get("/auth/whoami", headers=USER).json() == {"access": "user"}
        assert client.get("/auth/whoami", headers=ADMIN).json() == {"access": "admin"}
        assert client.get("/inference/traffic").status_code == 401
        traffic = client.get("/inference/traffic", headers=USER).json()
        assert traffic["success"] is True
        assert traffic["interval_s"] == 5.0 and traffic["window_s"] == 900.0
        assert len(traffic["t"]) <= 1  # just started: at most the provisional point
        schema = client.get("/openapi.json").json()
        assert not any(path.startswith("/ui") for path in schema["paths"])
        assert schema["paths"]["/auth/whoami"]["get"]["security"] == [{"bearer": []}]


def test_without_keys_the_console_is_open(start_aiml: Callable[..., RunningAiml]) -> None:
    aiml = start_aiml()
    with aiml.client() as client:
        assert client.get("/auth/whoami").json() == {"access": "open"}


def test_the_console_never_writes_html_or_evaluates_code() -> None:
    """Preact escapes what it renders; the console must not bypass it, nor need eval."""
    sources = list((STATIC_DIR / "js").glob("*.js"))
    assert len(sources) >= 6
    for path in sources:
        text = path.read_text()
        for forbidden in FORBIDDEN:
            assert forbidden not in text, (path.name, forbidden)
    files = {path.name for path in STATIC_DIR.rglob("*")}
    for shipped in ("LICENSE-preact", "LICENSE-htm", "LICENSE-uplot"):
        assert shipped in files


def test_the_cold_load_is_small() -> None:
    """What a first visit downloads (gzipped, as served), scripts loaded lazily included."""
    b = bundle()
    served = sum(len(a.gzipped or a.body) for a in b.assets.values())
    page = len(gzip.compress(b.index.encode()))
    assert page + served < 200_000, (page, served)
