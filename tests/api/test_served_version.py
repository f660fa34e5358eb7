"""Every response names the registry version that served it (``x-aiml-model-version``), on
every surface, streamed or not; a model named by its engine's own name has no version."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import Registry, RunningAiml, RunningOllama

HEADER = "x-aiml-model-version"
CHAT = [{"role": "user", "content": "hi there"}]


@pytest.fixture
def aiml(registry: Registry, start_aiml: Callable[..., RunningAiml]) -> RunningAiml:
    registry.register("chatty", "llama2:7b", task="chat")
    registry.register("chatty", "llama2:13b", task="chat", alias="production")  # version 2
    registry.register("chatty", "llama2:7b", task="chat")  # version 3: the latest
    registry.register("embedder", "nomic-embed-text:latest", task="embeddings")
    return start_aiml()


#: (method path, body) of each surface; the model is named in the body.
SURFACES: list[tuple[str, dict[str, Any]]] = [
    ("/inference/infer", {"task": "chat", "engine": "ollama", "model_name": "chatty@production",
                          "data": {"messages": CHAT}}),
    ("/inference/infer", {"task": "chat", "engine": "ollama", "model_name": "chatty@production",
                          "data": {"messages": CHAT}, "stream": True}),
    ("/v1/chat/completions", {"model": "chatty@production", "messages": CHAT}),
    ("/v1/chat/completions", {"model": "chatty@production", "messages": CHAT, "stream": True}),
    ("/v1/completions", {"model": "chatty@production", "prompt": "hello"}),
    ("/v1/responses", {"model": "chatty@production", "input": "hello"}),
    ("/v1/responses", {"model": "chatty@production", "input": "hello", "stream": True}),
    ("/api/chat", {"model": "chatty@production", "messages": CHAT}),  # streams by default
    ("/api/chat", {"model": "chatty@production", "messages": CHAT, "stream": False}),
    ("/api/generate", {"model": "chatty@production", "prompt": "hello", "stream": False}),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body"), SURFACES)
def test_each_surface_names_the_version_that_served_it(
    aiml: RunningAiml, path: str, body: dict[str, Any]
) -> None:
    with aiml.client() as client, client.stream("POST", path, json=body) as response:
        response.read()
        assert response.status_code == 200, response.text
        assert response.headers[HEADER] == "chatty/2"


def test_the_latest_and_a_pinned_version_are_named_too(aiml: RunningAiml) -> None:
    with aiml.client() as client:
        latest = client.post("/v1/chat/completions", json={"model": "chatty", "messages": CHAT})
        pinned = client.post("/v1/chat/completions", json={"model": "chatty/1", "messages": CHAT})
    assert latest.headers[HEADER] == "chatty/3"
    assert pinned.headers[HEADER] == "chatty/1"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/embeddings", {"model": "embedder", "input": "hello"}),
        ("/api/embed", {"model": "embedder", "input": "hello"}),
    ],
)
def test_embeddings_name_their_version(aiml: RunningAiml, path: str, body: dict[str, Any]) -> None:
    with aiml.client() as client:
        response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    assert response.headers[HEADER] == "embedder/1"


def test_an_engines_own_model_names_no_version(aiml: RunningAiml) -> None:
    with aiml.client() as client:
        response = client.post("/v1/chat/completions", json={"model": "ollama/llama2:7b",
                                                              "messages": CHAT})  # fmt: skip
    assert response.status_code == 200, response.text
    assert HEADER not in response.headers


def test_a_request_that_never_reaches_a_version_names_none(aiml: RunningAiml) -> None:
    with aiml.client() as client:
        response = client.post("/v1/chat/completions", json={"model": "nobody", "messages": CHAT})
    assert response.status_code == 404
    assert HEADER not in response.headers


def test_each_version_has_its_own_health_in_stats_and_metrics(
    aiml: RunningAiml, ollama: RunningOllama
) -> None:
    with aiml.client() as client:
        for _ in range(3):
            client.post("/v1/chat/completions", json={"model": "chatty@production",
                                                      "messages": CHAT})  # fmt: skip
        with client.stream("POST", "/v1/chat/completions", json={
            "model": "chatty", "messages": CHAT, "stream": True
        }) as streamed:  # fmt: skip
            streamed.read()
        ollama.state.answer = (500, "the engine broke", {})
        failed = client.post("/v1/chat/completions", json={"model": "chatty@production",
                                                           "messages": CHAT})  # fmt: skip
        assert failed.status_code >= 500
        ollama.state.answer = None
        stats = client.get("/inference/stats").json()["stats"]["by_version"]
        metrics = client.get("/metrics").text
    stable, latest = stats["chatty/2"], stats["chatty/3"]
    assert stable["requests"] == 4
    assert stable["by_status"] == {"200": 3, str(failed.status_code): 1}
    assert stable["error_ratio"] == 0.25
    assert stable["latency_s"]["p50"] is not None
    assert latest["requests"] == 1
    assert latest["time_to_first_token_s"]["p50"] is not None  # streamed
    assert latest["tokens_per_s"]["p50"] is not None
    assert 'aiml_version_requests_total{model_version="chatty/2",status="200"} 3.0' in metrics
    assert 'aiml_version_error_ratio{model_version="chatty/2"} 0.25' in metrics
