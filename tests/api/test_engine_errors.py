"""What an engine's answer becomes on every surface (the contract in aiml.engines.base), and
what aiml's own bug becomes: a 500 naming the request id, never a 502."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.conftest import Registry, RunningAiml, RunningOllama

MESSAGES = [{"role": "user", "content": "hi"}]
REFUSAL = "input length 9000 exceeds the context length 4096"


@pytest.fixture
def aiml(start_aiml: Callable[..., RunningAiml], registry: Registry) -> RunningAiml:
    registry.register("llama2-7b-chat", "llama2:7b", task="chat", alias="production")
    return start_aiml()


def surfaces(aiml: RunningAiml, *, stream: bool = False) -> dict[str, httpx.Response]:
    """One chat request on each surface, all for the same registered model."""
    with aiml.client() as client:
        return {
            "/inference": client.post(
                "/inference/infer",
                json={
                    "task": "chat",
                    "engine": "ollama",
                    "model_name": "llama2-7b-chat@production",
                    "data": {"messages": MESSAGES},
                    "stream": stream,
                },
            ),
            "/v1": client.post(
                "/v1/chat/completions",
                json={"model": "llama2-7b-chat@production", "messages": MESSAGES, "stream": stream},
            ),
            "/api": client.post(
                "/api/chat",
                json={"model": "llama2-7b-chat:production", "messages": MESSAGES, "stream": stream},
            ),
        }


def message_of(surface: str, body: dict[str, Any]) -> str:
    return str(body["error"] if surface == "/api" else body["error"]["message"])


def code_of(surface: str, body: dict[str, Any]) -> str | None:
    return None if surface == "/api" else str(body["error"]["code"])


@pytest.mark.parametrize("stream", [False, True])
def test_the_engines_400_stays_a_400_with_its_message(
    aiml: RunningAiml, ollama: RunningOllama, stream: bool
) -> None:
    assert surfaces(aiml)["/v1"].status_code == 200
    ollama.state.answer = (400, REFUSAL, {})
    for surface, response in surfaces(aiml, stream=stream).items():
        assert response.status_code == 400, (surface, response.text)
        assert REFUSAL in message_of(surface, response.json())
        assert code_of(surface, response.json()) in (None, "engine_rejected")


def test_the_engines_429_is_passed_on_with_its_retry_after(
    aiml: RunningAiml, ollama: RunningOllama
) -> None:
    ollama.state.answer = (429, "too many requests", {"Retry-After": "7"})
    for surface, response in surfaces(aiml).items():
        assert response.status_code == 429, (surface, response.text)
        assert response.headers["retry-after"] == "7"
        assert code_of(surface, response.json()) in (None, "engine_overloaded")


def test_the_engines_503_is_engine_unavailable(aiml: RunningAiml, ollama: RunningOllama) -> None:
    ollama.state.answer = (503, "server busy loading a model", {})
    for surface, response in surfaces(aiml).items():
        assert response.status_code == 503, (surface, response.text)
        assert code_of(surface, response.json()) in (None, "engine_unavailable")


def test_a_bug_in_aiml_is_a_500_naming_the_request_id(
    aiml: RunningAiml, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(**kwargs: object) -> object:
        raise KeyError("a bug in aiml")

    engine = aiml.services.engines["ollama"]
    monkeypatch.setattr(engine._client, "chat", broken)  # type: ignore[attr-defined]
    for surface, response in surfaces(aiml).items():
        assert response.status_code == 500, (surface, response.text)
        request_id = response.headers["x-request-id"]
        assert request_id in message_of(surface, response.json())
        assert code_of(surface, response.json()) in (None, "internal_error")
