"""A canary declared in the registry (a version tag on the alias's version, as a pipeline
sets it with ``MlflowClient``): its weight holds over many callers within binomial bounds,
each caller keeps its version (the OpenAI ``user`` field, a session header), streams and
every surface follow the same choice, and a canary naming a version that is gone, or
written wrong, splits nothing."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from aiml.cli import app
from tests.conftest import Registry, RunningAiml, RunningOllama

HEADER = "x-aiml-model-version"
CHAT = [{"role": "user", "content": "hi"}]


@pytest.fixture
def canary(registry: Registry, start_aiml: Callable[..., RunningAiml]) -> RunningAiml:
    registry.register("m", "llama2:7b", task="chat", alias="production")  # version 1
    registry.register("m", "llama2:13b", task="chat")  # version 2: the candidate
    registry.client.set_model_version_tag("m", "1", "aiml.canary.production", "2:10")
    return start_aiml()


def _served(client: httpx.Client, user: str | None = None, **extra: object) -> str:
    body: dict[str, object] = {"model": "m@production", "messages": CHAT, **extra}
    if user is not None:
        body["user"] = user
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.headers[HEADER]


def test_a_90_10_canary_lands_within_binomial_bounds_and_sticks_per_user(
    canary: RunningAiml,
) -> None:
    n, p = 2000, 0.10
    with canary.client() as client, ThreadPoolExecutor(8) as pool:
        served = Counter(pool.map(lambda i: _served(client, f"user-{i}"), range(n)))
        assert set(served) == {"m/1", "m/2"}
        bound = 4 * math.sqrt(n * p * (1 - p))  # 4 standard deviations: ~1 in 16,000 fails
        assert abs(served["m/2"] - n * p) < bound, served
        for user in ("alice", "bob", "carol", "dave"):
            again = {_served(client, user) for _ in range(20)}
            assert len(again) == 1, (user, again)  # one version for the whole conversation


def test_streams_the_session_header_and_other_surfaces_follow_the_same_choice(
    canary: RunningAiml,
) -> None:
    with canary.client() as client:
        users = [f"u{i}" for i in range(200)]
        chosen = {user: _served(client, user) for user in users}
        on_candidate = next(u for u, v in chosen.items() if v == "m/2")
        on_stable = next(u for u, v in chosen.items() if v == "m/1")
        for user, version in ((on_candidate, "m/2"), (on_stable, "m/1")):
            body = {"model": "m@production", "messages": CHAT, "user": user, "stream": True}
            with client.stream("POST", "/v1/chat/completions", json=body) as streamed:
                streamed.read()
                assert streamed.headers[HEADER] == version
            completion = client.post(
                "/v1/completions", json={"model": "m@production", "prompt": "x", "user": user}
            )
            assert completion.headers[HEADER] == version
            tools = [{"type": "function", "function": {"name": "now", "parameters": {}}}]
            with_tools = client.post(
                "/v1/chat/completions",
                json={"model": "m@production", "messages": CHAT, "user": user, "tools": tools},
            )
            assert with_tools.status_code == 200, with_tools.text
            assert with_tools.headers[HEADER] == version
            for field in ("safety_identifier", "user"):  # the Responses API's caller fields
                body = {"model": "m@production", "input": "hi", field: user}
                response = client.post("/v1/responses", json=body)
                assert response.status_code == 200, response.text
                assert response.headers[HEADER] == version
                later = {"model": "m@production", "input": "and?", field: user,
                         "previous_response_id": response.json()["id"], "stream": True}  # fmt: skip
                with client.stream("POST", "/v1/responses", json=later) as streamed:
                    streamed.read()
                    assert streamed.headers[HEADER] == version  # the conversation stays
        sessions = Counter()
        for i in range(100):
            session = {"x-aiml-session": f"conversation-{i}"}
            seen = {
                client.post(
                    "/api/chat",
                    json={"model": "m@production", "messages": CHAT, "stream": False},
                    headers=session,
                ).headers[HEADER]
                for _ in range(3)
            }
            assert len(seen) == 1, seen  # a session keeps its version on Ollama's surface too
            sessions[seen.pop()] += 1
        assert sessions["m/2"] > 0
        assert sessions["m/1"] > sessions["m/2"]


@pytest.mark.parametrize("declared", ["9:10", "2:oops"])
def test_a_canary_that_cannot_split_serves_the_alias_version(
    registry: Registry, start_aiml: Callable[..., RunningAiml], declared: str
) -> None:
    registry.register("m", "llama2:7b", task="chat", alias="production")
    registry.register("m", "llama2:13b", task="chat")
    registry.client.set_model_version_tag("m", "1", "aiml.canary.production", declared)
    aiml = start_aiml()
    with aiml.client() as client:
        assert {_served(client, f"user-{i}") for i in range(100)} == {"m/1"}


def test_a_canary_declared_in_mlflow_on_a_version_that_cannot_serve_is_not_split(
    registry: Registry, start_aiml: Callable[..., RunningAiml]
) -> None:
    """Through aiml such a canary is a 409; written with MlflowClient it is checked the
    same way before any caller is sent to it (a 400 per chat would pass the guard by)."""
    registry.register("m", "llama2:7b", task="chat", alias="production")
    registry.register("m", "nomic-embed-text:latest", task="embeddings")  # no chat
    registry.register("m", "llama2:13b", task="chat")
    registry.client.set_model_version_tag("m", "1", "aiml.canary.production", "2:100")
    aiml = start_aiml()
    with aiml.client() as client:
        assert {_served(client, f"user-{i}") for i in range(20)} == {"m/1"}
        [refused] = client.get("/inference/stats").json()["stats"]["refused_canaries"]
        assert (refused["stable"], refused["candidate"]) == (1, 2)
        assert "chat" in {m["name"] for m in refused["missing"]}
        # The pipeline names a version that can: taken at once (webhook or aiml's own write).
        route = "/models/registered_in_mlflow/m/aliases/production/canary"
        assert client.put(route, json={"version": 3, "weight": 100}).status_code == 200
        assert {_served(client, f"user-{i}") for i in range(20)} == {"m/3"}


def test_a_full_weight_canary_serves_the_candidate_and_a_pinned_version_is_never_split(
    registry: Registry, start_aiml: Callable[..., RunningAiml]
) -> None:
    registry.register("m", "llama2:7b", task="chat", alias="production")
    registry.register("m", "llama2:13b", task="chat")
    registry.client.set_model_version_tag("m", "1", "aiml.canary.production", "2:100")
    aiml = start_aiml()
    with aiml.client() as client:
        assert {_served(client, f"user-{i}") for i in range(20)} == {"m/2"}
        pinned = client.post("/v1/chat/completions", json={"model": "m/1", "messages": CHAT})
        assert pinned.headers[HEADER] == "m/1"


def test_a_canary_through_the_admin_api_shows_in_mlflow_and_is_promoted(
    registry: Registry, start_aiml: Callable[..., RunningAiml]
) -> None:
    registry.register("m", "llama2:7b", task="chat", alias="production")
    registry.register("m", "llama2:13b", task="chat")
    registry.register("m", "nomic-embed-text:latest", task="embeddings")  # version 3
    aiml = start_aiml()
    route = "/models/registered_in_mlflow/m/aliases/production/canary"
    with aiml.client() as client:
        assert client.get(route).json()["canary"] is None
        refused = client.put(route, json={"version": 3, "weight": 10})
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"]["code"] == "unsafe_alias_move"
        started = client.put(route, json={"version": 2, "weight": 50})
        assert started.status_code == 200, started.text
        assert started.json()["canary"] == {"version": 2, "weight": 50, "plan": None}
        tags = registry.client.get_model_version("m", "1").tags
        assert tags["aiml.canary.production"] == "2:50"  # in MLflow, on the alias's version
        served = Counter(_served(client, f"user-{i}") for i in range(200))
        assert served["m/1"] > 50 and served["m/2"] > 50, served  # taken at once, no TTL
        promoted = client.post(f"{route}/promote")
        assert promoted.status_code == 200, promoted.text
        assert str(registry.client.get_model_version_by_alias("m", "production").version) == "2"
        assert "aiml.canary.production" not in registry.client.get_model_version("m", "1").tags
        assert {_served(client, f"user-{i}") for i in range(50)} == {"m/2"}
        assert client.get(route).json() == {
            "success": True, "name": "m", "alias": "production", "version": 2, "canary": None
        }  # fmt: skip
        client.put(route, json={"version": 1, "weight": 100})
        assert {_served(client, f"user-{i}") for i in range(20)} == {"m/1"}
        stopped = client.delete(route)
        assert stopped.json()["stopped"] == 1
        assert {_served(client, f"user-{i}") for i in range(20)} == {"m/2"}
        assert client.post(f"{route}/promote").status_code == 422  # no canary to promote


def test_the_rollout_commands_drive_a_canary(
    registry: Registry, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ollama: RunningOllama
) -> None:
    registry.register("m", "llama2:7b", task="chat", alias="production")
    registry.register("m", "llama2:13b", task="chat")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.uri)
    monkeypatch.setenv("OLLAMA_HOST", ollama.url)
    monkeypatch.setenv("AIML_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AIML_ENGINES", "ollama")
    runner = CliRunner()
    started = runner.invoke(app, ["rollout", "canary", "m", "production", "2", "--weight", "5"])
    assert started.exit_code == 0, started.output
    assert "5% to version 2" in started.output
    status = runner.invoke(app, ["rollout", "status", "m", "production"])
    assert "version 1; 5% to version 2" in status.output
    promoted = runner.invoke(app, ["rollout", "promote", "m", "production"])
    assert promoted.exit_code == 0, promoted.output
    assert str(registry.client.get_model_version_by_alias("m", "production").version) == "2"
    assert "no canary" in runner.invoke(app, ["rollout", "status", "m", "production"]).output
    staged = runner.invoke(
        app, ["rollout", "canary", "m", "production", "1", "--plan", "5,50", "--dwell", "300"]
    )
    assert staged.exit_code == 0, staged.output
    assert "5% to version 1 (plan 5% -> 50%, 300 s a step, then promoted)" in staged.output
    tag = registry.client.get_model_version("m", "2").tags["aiml.canary.production"]
    assert tag.startswith("1:5 plan=5,50 dwell=300 since="), tag
    bad = runner.invoke(app, ["rollout", "canary", "m", "production", "1", "--plan", "5,x"])
    assert bad.exit_code != 0 and "percents separated by commas" in bad.output


def test_a_version_past_what_the_registry_stores_is_refused_as_input(
    registry: Registry, start_aiml: Callable[..., RunningAiml]
) -> None:
    """Found by the fuzzer: 2**63 + 1 reached sqlite and came back a 502."""
    registry.register("m", "llama2:7b", task="chat", alias="production")
    aiml = start_aiml()
    route = "/models/registered_in_mlflow/m/aliases/production"
    with aiml.client() as client:
        for path, body in ((f"{route}/canary", {"version": 2**63 + 1, "weight": 1}),
                           (route, {"version": 2**63 + 1})):  # fmt: skip
            answer = client.put(path, json=body, params={"force": "true"})
            assert answer.status_code == 422, answer.text
            assert answer.json()["error"]["param"].endswith("version")
