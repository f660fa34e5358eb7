"""Keys, scopes, limits, request ids and the loopback rule."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable

import httpx
import pytest

from aiml.api.auth import KeyRing
from aiml.observability.logging import JsonFormatter
from aiml.server import safe_host
from aiml.settings import Settings
from tests.conftest import Registry, RunningAiml

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


def test_keys_are_kept_as_digests_only() -> None:
    ring = KeyRing.from_setting("alpha-secret, beta-secret")
    assert ring.accepts("alpha-secret")
    assert ring.accepts("beta-secret")
    assert not ring.accepts("alpha-secre")
    assert "alpha-secret" not in repr(vars(ring))
    assert not KeyRing.from_setting(" , ")


def test_without_keys_aiml_binds_loopback_only(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="aiml"):
        assert safe_host(Settings(host="0.0.0.0")) == "127.0.0.1"
    assert "binding 127.0.0.1 instead of 0.0.0.0" in caplog.text
    assert safe_host(Settings(host="0.0.0.0", api_keys="k")) == "0.0.0.0"
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
