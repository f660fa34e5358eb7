"""The seven defects of the earlier system (GUIDE.md), each shown absent over HTTP.

Every test here fails on the earlier design: it drives aiml as that system's clients do and
counts what reaches the registry (a spy around the MLflow client) and the engine (the
stand-in Ollama server's request counts).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx

from tests.conftest import Registry, RunningAiml, RunningOllama
from tests.fakes.mlflow_client import UnreachableMlflowClient


def test_1_clear_cache_clears_the_mapping(
    start_aiml: Callable[..., RunningAiml], registry: Registry, ollama: RunningOllama
) -> None:
    registry.register("llama2-7b-chat", "llama2:7b")
    aiml = start_aiml()
    assert aiml.infer("llama2-7b-chat").status_code == 200
    assert aiml.infer("llama2-7b-chat").status_code == 200
    warm_calls = aiml.spy.total

    with aiml.client() as client:
        cleared = client.post("/inference/clear-cache").json()["cleared"]
        stats = client.get("/inference/stats").json()["stats"]
    assert cleared == {"executors": 1, "mappings": 1}
    assert stats["executors"] == []
    assert stats["cache"]["entries"] == 0

    # The registry is asked again: the mapping really went.
    assert aiml.infer("llama2-7b-chat").status_code == 200
    assert aiml.spy.total > warm_calls


def test_2_one_reference_costs_constant_registry_calls(
    start_aiml: Callable[..., RunningAiml], registry: Registry
) -> None:
    for index in range(200):
        registry.register(f"filler-{index:03d}", "llama2:7b")
    registry.register("llama2-7b-chat", "llama2:7b", alias="production")
    aiml = start_aiml()

    for reference in ("llama2-7b-chat", "llama2-7b-chat@production", "llama2-7b-chat/1"):
        before = aiml.spy.total
        assert aiml.infer(reference).status_code == 200
        assert aiml.spy.total - before == 1, reference  # one call, whatever the registry holds
        before = aiml.spy.total
        assert aiml.infer(reference).status_code == 200
        assert aiml.spy.total == before  # warm: none
    assert "search_registered_models" not in aiml.spy.calls


def test_2_a_failed_lookup_is_not_swallowed_into_the_raw_name(
    start_aiml: Callable[..., RunningAiml], registry: Registry, ollama: RunningOllama
) -> None:
    # The engine has a model called exactly like the reference, but the registry errors:
    # the earlier system used the raw name; aiml must report the registry failure.
    ollama.state.add("llama2-7b-chat")
    aiml = start_aiml()
    aiml.services.registry._client = UnreachableMlflowClient()  # type: ignore[assignment]
    response = aiml.infer("llama2-7b-chat")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "registry_unavailable"
    assert ollama.state.counts["POST /api/generate"] == 0


def test_3_concurrent_first_requests_resolve_once(
    start_aiml: Callable[..., RunningAiml], registry: Registry, ollama: RunningOllama
) -> None:
    registry.register("llama2-7b-chat", "llama2:7b", alias="production")
    aiml = start_aiml()
    ollama.state.delay_s = 0.05

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=aiml.url, timeout=30) as client:
            body = {
                "task": "text-generation",
                "engine": "ollama",
                "model_name": "llama2-7b-chat@production",
                "data": {"inputs": "hi"},
            }
            responses = await asyncio.gather(
                *(client.post("/inference/infer", json=body) for _ in range(50))
            )
        return [r.status_code for r in responses]

    assert asyncio.run(burst()) == [200] * 50
    assert aiml.spy.total == 1  # one registry resolution
    assert ollama.state.counts["GET /api/tags"] == 1  # one engine check
    assert ollama.state.counts["POST /api/pull"] == 0  # never pulled
    assert ollama.state.counts["POST /api/generate"] == 50
    with aiml.client() as client:
        assert client.get("/inference/stats").json()["stats"]["resolutions"] == 1


def test_4_handler_is_chosen_per_model(
    start_aiml: Callable[..., RunningAiml], registry: Registry, ollama: RunningOllama
) -> None:
    registry.register("chatty", "qwen2:0.5b", task="chat")
    registry.register("plain", "llama2:7b", task="text-generation")
    registry.register("embedder", "nomic-embed-text", task="embeddings")
    aiml = start_aiml()

    # Same (text-generation, ollama) executor, models of different kinds, in both orders.
    for order in (("chatty", "plain"), ("plain", "chatty")):
        for name in order:
            before = ollama.state.counts.copy()
            response = aiml.infer(name)
            assert response.status_code == 200, response.text
            route = "POST /api/chat" if name == "chatty" else "POST /api/generate"
            assert ollama.state.counts[route] == before[route] + 1, (order, name)
    with aiml.client() as client:
        assert client.get("/inference/stats").json()["stats"]["executors"] == [
            "text-generation/ollama"
        ]

    refused = aiml.infer("embedder")
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "model_not_servable"


def test_5_names_match_exactly_with_ollamas_latest_rule(
    start_aiml: Callable[..., RunningAiml], registry: Registry, ollama: RunningOllama
) -> None:
    aiml = start_aiml()
    # Only llama2:7b and llama2:13b exist: "llama2" means llama2:latest, which is absent.
    response = aiml.infer("llama2")
    assert response.status_code == 404
    assert ollama.state.counts["POST /api/generate"] == 0

    ollama.state.add("llama2:latest")
    response = aiml.infer("llama2")
    assert response.status_code == 200
    assert response.json()["resolved"]["engine_model"] == "llama2:latest"
    # A registry tag naming "llama2" maps to llama2:latest, never llama2:13b.
    registry.register("base", "llama2")
    assert aiml.infer("base").json()["resolved"]["engine_model"] == "llama2:latest"
    # A prefix is not a match.
    assert aiml.infer("llama").status_code == 404


def test_6_moved_alias_and_new_version_are_seen_within_the_ttl(
    start_aiml: Callable[..., RunningAiml], registry: Registry, ollama: RunningOllama
) -> None:
    ttl = 0.5
    registry.register("assistant", "llama2:7b", alias="production")
    registry.register("assistant", "llama2:13b")
    aiml = start_aiml(resolve_ttl_s=ttl)

    def served(reference: str) -> str:
        response = aiml.infer(reference)
        assert response.status_code == 200, response.text
        return str(response.json()["resolved"]["engine_model"])

    assert served("assistant@production") == "llama2:7b"
    assert served("assistant") == "llama2:13b"
    # Moved behind aiml's back, straight in the registry, as another team would.
    moved_at = time.monotonic()
    registry.client.set_registered_model_alias("assistant", "production", "2")
    registry.register("assistant", "qwen2:0.5b")
    while served("assistant@production") != "llama2:13b":
        assert time.monotonic() - moved_at < ttl + 2.0, "alias move not seen within the TTL"
    while served("assistant") != "qwen2:0.5b":
        assert time.monotonic() - moved_at < ttl + 2.0, "new version not seen within the TTL"
    # A pinned version never changes, so it is still served from the cache.
    assert served("assistant/1") == "llama2:7b"
    before = aiml.spy.total
    assert served("assistant/1") == "llama2:7b"
    assert aiml.spy.total == before


def test_7_failures_are_never_200(
    start_aiml: Callable[..., RunningAiml], registry: Registry, ollama: RunningOllama
) -> None:
    registry.register("llama2-7b-chat", "llama2:7b")
    aiml = start_aiml()
    cases = {
        "missing model": (aiml.infer("no-such-model"), 404, "model_not_found"),
        "bad task": (aiml.infer("llama2-7b-chat", task="painting"), 422, "invalid_request"),
        "bad data": (aiml.infer("llama2-7b-chat", data={"text": "x"}), 422, "invalid_request"),
    }
    ollama.server.stop()
    cases["engine down"] = (aiml.infer("llama2:7b"), 503, "engine_unavailable")
    for label, (response, status, code) in cases.items():
        assert response.status_code == status, label
        assert response.json() == {"success": False, "error": response.json()["error"]}, label
        assert response.json()["error"]["code"] == code, label
        assert response.json()["error"]["message"], label
