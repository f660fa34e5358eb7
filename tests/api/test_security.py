"""Keys, scopes, limits, request ids and the loopback rule."""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from starlette.routing import Route

from aiml.api.app import create_app
from aiml.api.auth import ROUTE_ACCESS, Access, access_of
from aiml.observability.logging import JsonFormatter
from aiml.server import safe_host
from aiml.settings import Settings
from aiml.teams.directory import KeyDirectory, environment_keys
from aiml.teams.keys import secret_digest
from tests.conftest import Registry, RunningAiml, RunningOllama

USER = {"authorization": "Bearer user-key"}
ADMIN = {"authorization": "Bearer admin-key"}
CHAT = {"task": "chat", "engine": "ollama", "model_name": "llama2:7b",
        "data": {"messages": [{"role": "user", "content": "hi"}]}}  # fmt: skip


@pytest.fixture
def aiml(start_aiml: Callable[..., RunningAiml], registry: Registry) -> RunningAiml:
    registry.register("llama2-7b-chat", "llama2:7b", alias="production")
    return start_aiml(api_keys="user-key,second-user", admin_keys="admin-key")


def test_every_surface_needs_a_key_in_its_own_error_format(aiml: RunningAiml) -> None:
    with httpx.Client(base_url=aiml.url) as anonymous:
        own = anonymous.post("/inference/infer", json=CHAT)
        assert own.status_code == 401
        assert own.json()["error"]["code"] == "unauthorized"
        assert own.headers["www-authenticate"] == "Bearer"
        openai = anonymous.post("/v1/chat/completions", json={"model": "x", "messages": []})
        assert openai.status_code == 401
        assert openai.json()["error"]["type"] == "authentication_error"
        ollama = anonymous.post("/api/chat", json={"model": "x"})
        assert ollama.status_code == 401
        assert set(ollama.json()) == {"error"}
        wrong = anonymous.post(
            "/inference/infer", json=CHAT, headers={"authorization": "Bearer nope"}
        )
        assert wrong.status_code == 401
        for open_route in ("/health/live", "/health/ready", "/metrics"):
            assert anonymous.get(open_route).status_code == 200, open_route
    for headers in (USER, {"authorization": "Bearer second-user"}, ADMIN):
        with httpx.Client(base_url=aiml.url, headers=headers) as client:
            assert client.post("/inference/infer", json=CHAT).status_code == 200


def test_admin_routes_need_an_admin_key(aiml: RunningAiml) -> None:
    admin_calls = [
        ("POST", "/inference/clear-cache", None),
        (
            "POST",
            "/models/register_ollama",
            {"local_model_name": "llama2:7b", "registered_name": "x"},
        ),
        ("PUT", "/models/registered_in_mlflow/llama2-7b-chat/aliases/staging", {"version": 1}),
        ("DELETE", "/models/registered_in_mlflow/llama2-7b-chat/aliases/staging", None),
        ("POST", "/admin/models/load", {"engine": "ollama", "model_name": "llama2:7b"}),
    ]
    with httpx.Client(base_url=aiml.url) as client:
        for method, path, body in admin_calls:
            as_user = client.request(method, path, json=body, headers=USER)
            assert as_user.status_code == 403, (method, path)
            as_admin = client.request(method, path, json=body, headers=ADMIN)
            assert as_admin.status_code in (200, 201), (method, path, as_admin.text)
        # reading the registry is a user's right
        assert client.get("/models/registered_in_mlflow", headers=USER).status_code == 200


def test_environment_keys_are_kept_as_digests_only() -> None:
    keys = environment_keys("alpha-secret, beta-secret", "")
    directory = KeyDirectory(None, keys)
    assert directory.lookup(secret_digest("alpha-secret")).key is not None  # type: ignore[union-attr]
    assert directory.lookup(secret_digest("beta-secret")).key is not None  # type: ignore[union-attr]
    assert directory.lookup(secret_digest("alpha-secre")) is None
    assert "alpha-secret" not in repr(keys) + repr(vars(directory))
    assert not environment_keys(" , ", "")


def test_without_keys_aiml_binds_loopback_only(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="aiml"):
        assert safe_host(Settings(host="0.0.0.0")) == "127.0.0.1"
    assert "binding 127.0.0.1 instead of 0.0.0.0" in caplog.text
    assert safe_host(Settings(host="0.0.0.0", api_keys="k")) == "0.0.0.0"
    assert safe_host(Settings(host="0.0.0.0", admin_keys="k")) == "0.0.0.0"
    assert safe_host(Settings(host="0.0.0.0"), stored_keys=True) == "0.0.0.0"
    assert safe_host(Settings(host="::1")) == "::1"


def test_limits_give_413_and_422(start_aiml: Callable[..., RunningAiml]) -> None:
    aiml = start_aiml(
        max_body_bytes=4096, max_prompt_chars=100, max_tokens_limit=64,
        max_embed_inputs=3, max_image_bytes=10,
    )  # fmt: skip
    with aiml.client() as client:
        long_prompt = {**CHAT, "data": {"messages": [{"role": "user", "content": "x" * 101}]}}
        assert client.post("/inference/infer", json=long_prompt).status_code == 413
        huge = client.post("/inference/infer", content=b"{" + b" " * 5000 + b"}",
                           headers={"content-type": "application/json"})  # fmt: skip
        assert huge.status_code == 413

        def chunked() -> object:
            yield b'{"task": "chat", "pad": "'
            yield b"x" * 5000
            yield b'"}'

        streamed = client.post(
            "/inference/infer", content=chunked(), headers={"content-type": "application/json"}
        )
        assert streamed.status_code == 413  # no Content-Length: counted while read
        too_many = client.post("/inference/infer", json={**CHAT, "options": {"max_tokens": 65}})
        assert too_many.status_code == 422
        assert too_many.json()["error"]["param"] == "options.max_tokens"
        batch = {"task": "embeddings", "engine": "ollama", "model_name": "nomic-embed-text",
                 "data": {"inputs": ["a", "b", "c", "d"]}}  # fmt: skip
        assert client.post("/inference/infer", json=batch).status_code == 413
        image = base64.b64encode(b"0123456789abc").decode()
        vlm = {"task": "vlm", "engine": "ollama", "model_name": "llama2:7b",
               "data": {"image": image, "prompt": "what"}}  # fmt: skip
        assert client.post("/inference/infer", json=vlm).status_code == 413
        openai = client.post(
            "/v1/chat/completions",
            json={
                "model": "ollama/llama2:7b",
                "messages": [{"role": "user", "content": "x" * 101}],
            },
        )
        assert openai.status_code == 413, openai.text
        assert openai.json()["error"]["code"] == "payload_too_large"


def test_request_ids_come_back_and_go_into_the_logs(aiml: RunningAiml) -> None:
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(JsonFormatter().format(record))

    access = logging.getLogger("aiml.access")
    handler = Collect()
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    try:
        with httpx.Client(base_url=aiml.url, headers=USER) as client:
            traced = client.post(
                "/inference/infer", json=CHAT, headers={"x-request-id": "trace-42"}
            )
            assert traced.headers["x-request-id"] == "trace-42"
            fresh = client.post("/inference/infer", json={**CHAT, "model_name": "absent:1"})
            assert fresh.status_code == 404
            assert len(fresh.headers["x-request-id"]) == 32
            evil = client.get("/inference/stats", headers={"x-request-id": "bad id with spaces"})
            assert evil.headers["x-request-id"] != "bad id with spaces"
    finally:
        access.removeHandler(handler)
    records = [json.loads(line) for line in lines]
    mine = [r for r in records if r["request_id"] == "trace-42"]
    assert mine
    assert mine[0]["status"] == 200
    assert mine[0]["duration_ms"] > 0
    assert any(
        r["request_id"] == fresh.headers["x-request-id"] and r["status"] == 404 for r in records
    )


def test_a_user_key_neither_loads_nor_unloads_a_model_outside_a_request(
    aiml: RunningAiml, ollama: RunningOllama
) -> None:
    model = "llama2-7b-chat"
    with httpx.Client(base_url=aiml.url, headers=USER) as user:
        for route, body in (
            ("/api/generate", {"model": model, "keep_alive": 0}),  # unload
            ("/api/chat", {"model": model, "keep_alive": "0s"}),
            ("/api/generate", {"model": model, "prompt": ""}),  # load without a request
            ("/api/chat", {"model": model, "messages": []}),
        ):
            refused = user.post(route, json=body)
            assert refused.status_code == 403, (route, body, refused.text)
            assert "admin key" in refused.json()["error"]
        assert ollama.state.counts["load"] == ollama.state.counts["unload"] == 0
        # A request loads what it uses; its keep_alive changes nothing (no unload).
        used = user.post("/api/generate", json={"model": model, "prompt": "hi", "stream": False,
                                                "keep_alive": 0})  # fmt: skip
        assert used.status_code == 200 and used.json()["response"] == "llama2:7b heard: hi"
        assert ollama.state.counts["unload"] == 0
    with httpx.Client(base_url=aiml.url, headers=ADMIN) as admin:
        loaded = admin.post("/api/generate", json={"model": model, "prompt": ""})
        assert loaded.json()["done_reason"] == "load"
        unloaded = admin.post("/api/chat", json={"model": model, "keep_alive": 0})
        assert unloaded.json()["done_reason"] == "unload"
    assert ollama.state.counts["load"] == ollama.state.counts["unload"] == 1


def test_keep_alive_is_read_as_ollama_reads_a_duration(
    aiml: RunningAiml, ollama: RunningOllama
) -> None:
    model = "llama2-7b-chat"
    with httpx.Client(base_url=aiml.url, headers=ADMIN) as admin:
        for spelled in (0, 0.0, "0", "0h", "0.0s", "0ms", "-0m"):  # each an unload
            answer = admin.post("/api/generate", json={"model": model, "keep_alive": spelled})
            assert answer.json()["done_reason"] == "unload", (spelled, answer.text)
        for spelled in ("5m", "1h30m", "-1s", 300, -1):  # each a load
            answer = admin.post("/api/generate", json={"model": model, "keep_alive": spelled})
            assert answer.json()["done_reason"] == "load", (spelled, answer.text)
        for spelled in ("5 minutes", "300", "m", True):  # not durations, as Ollama says
            refused = admin.post("/api/generate", json={"model": model, "keep_alive": spelled})
            assert refused.status_code == 400, (spelled, refused.text)
    assert ollama.state.counts["unload"] == 7 and ollama.state.counts["load"] == 5


def test_pull_needs_an_admin_key_and_show_a_user_key(
    start_aiml: Callable[..., RunningAiml], registry: Registry, ollama: RunningOllama
) -> None:
    registry.register("llama2-7b-chat", "llama2:7b")
    ollama.state.pullable.add("llama2:7b")
    aiml = start_aiml(api_keys="user-key", admin_keys="admin-key", ollama_allow_pull=True)
    pull = {"model": "llama2-7b-chat", "stream": False}
    with httpx.Client(base_url=aiml.url) as client:
        refused = client.post("/api/pull", json=pull, headers=USER)
        assert refused.status_code == 403 and "admin key" in refused.json()["error"]
        assert ollama.state.counts["POST /api/pull"] == 0
        pulled = client.post("/api/pull", json=pull, headers=ADMIN)
        assert pulled.status_code == 200 and pulled.json() == {"status": "success"}
        assert ollama.state.counts["POST /api/pull"] == 1
        for read in ("/api/show", "/api/ps", "/api/tags"):  # reading stays a user's right
            method = "POST" if read == "/api/show" else "GET"
            body = {"model": "llama2-7b-chat"} if method == "POST" else None
            assert client.request(method, read, json=body, headers=USER).status_code == 200


def test_a_stored_response_is_its_keys_own(
    start_aiml: Callable[..., RunningAiml], registry: Registry
) -> None:
    registry.register("chatty", "llama2:7b", task="chat")
    aiml = start_aiml(api_keys="user-key,second-user", admin_keys="admin-key")
    other = {"authorization": "Bearer second-user"}
    with httpx.Client(base_url=aiml.url) as client:

        def create(headers: dict[str, str], **extra: str) -> httpx.Response:
            body = {"model": "chatty", "input": "My cat is Tom.", **extra}
            return client.post("/v1/responses", json=body, headers=headers)

        mine = create(USER).json()["id"]
        path = f"/v1/responses/{mine}"
        # Another user key: as if the id did not exist.
        assert client.get(path, headers=other).status_code == 404
        assert client.delete(path, headers=other).status_code == 404
        continued = create(other, previous_response_id=mine)
        assert continued.status_code == 404
        assert continued.json()["error"]["param"] == "previous_response_id"
        # Its own key, and admin keys, see it.
        assert client.get(path, headers=USER).json()["id"] == mine
        assert create(USER, previous_response_id=mine).status_code == 200
        assert client.get(path, headers=ADMIN).json()["id"] == mine
        assert create(ADMIN, previous_response_id=mine).status_code == 200
        assert client.delete(path, headers=USER).status_code == 200
        assert client.get(path, headers=USER).status_code == 404
        admins = create(ADMIN).json()["id"]  # an admin's is its own too, to user keys
        assert client.get(f"/v1/responses/{admins}", headers=USER).status_code == 404
        kept = create(USER).json()["id"]
        assert client.delete(f"/v1/responses/{kept}", headers=ADMIN).status_code == 200


def test_without_keys_every_stored_response_is_everyones(
    start_aiml: Callable[..., RunningAiml], registry: Registry
) -> None:
    registry.register("chatty", "llama2:7b", task="chat")
    with start_aiml().client() as client:
        first = client.post("/v1/responses", json={"model": "chatty", "input": "hi"}).json()["id"]
        assert client.get(f"/v1/responses/{first}").json()["id"] == first
        follow = {"model": "chatty", "input": "again", "previous_response_id": first}
        assert client.post("/v1/responses", json=follow).status_code == 200
        assert client.delete(f"/v1/responses/{first}").status_code == 200


def test_the_readme_key_table_is_the_path_table(tmp_path: Path) -> None:
    """Each route of the app gets from the README's table the key the middleware asks."""
    text = (Path(__file__).parents[2] / "README.md").read_text()
    table = text[text.index("| routes | key |") :].split("\n\n")[0].splitlines()[2:]
    listed: dict[str, list[str]] = {"none": [], "user": [], "admin": []}
    for row in table:
        routes, key = (cell.strip() for cell in row.strip("|").rsplit("|", 1))
        listed[key] += re.findall(r"`((?:[A-Z]+ )?/[^`]*)`", routes)
    rules = {Access.OPEN: "none", Access.ADMIN: "admin"}
    assert sorted(listed["none"] + listed["admin"]) == sorted(map(str, ROUTE_ACCESS))
    for rule in ROUTE_ACCESS:
        assert str(rule) in listed[rules[rule.access]], rule

    def matches(item: str, method: str, path: str) -> bool:
        wanted, _, pattern = item.rpartition(" ")
        if wanted and wanted != method:
            return False
        return path.startswith(pattern[:-1]) if pattern.endswith("*") else path == pattern

    app = create_app(Settings(home=tmp_path))
    routes = [(m, r.path) for r in app.routes if isinstance(r, Route) for m in r.methods or ()]
    used = set()
    for method, path in routes:
        said = [key for key, items in listed.items() for i in items if matches(i, method, path)]
        # An explicit none/admin row wins over the user row's groups.
        verdict = next((key for key in ("none", "admin") if key in said), "user" if said else None)
        assert verdict is not None, f"{method} {path} is not in the README's key table"
        assert verdict == {**rules, Access.USER: "user"}[access_of(method, path)], (method, path)
        used.update(i for i in listed["user"] if matches(i, method, path))
    assert used == set(listed["user"])  # no user group that names no route
