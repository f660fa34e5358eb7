"""A staged canary through the admin API on a real registry: it starts at its plan's first
step, steps up after each dwell while the guard holds and the candidate has traffic, and is
promoted past the last step (the alias moved, the canary's tag gone); a candidate that fails
is taken out by the guard at its first step and never stepped up."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from tests.conftest import Registry, RunningAiml, RunningOllama

CHAT = [{"role": "user", "content": "hi"}]
ROUTE = "/models/registered_in_mlflow/m/aliases/production/canary"
TAG = "aiml.canary.production"
GUARD = {"guard_check_s": 0.05, "guard_window_s": 30, "guard_min_requests": 5}


def _chat(client: httpx.Client, user: str) -> httpx.Response:
    return client.post(
        "/v1/chat/completions", json={"model": "m@production", "messages": CHAT, "user": user}
    )


def test_a_staged_canary_steps_up_while_the_guard_holds_then_is_promoted(
    registry: Registry, start_aiml: Callable[..., RunningAiml]
) -> None:
    registry.register("m", "llama2:7b", task="chat", alias="production")
    registry.register("m", "llama2:13b", task="chat")
    aiml = start_aiml(**GUARD)
    with aiml.client() as client:
        started = client.put(ROUTE, json={"version": 2, "plan": [10, 50, 100], "dwell_s": 0.5})
        assert started.status_code == 200, started.text
        canary = started.json()["canary"]
        assert (canary["weight"], canary["plan"]["steps"]) == (10, [10, 50, 100])
        assert client.get(ROUTE).json()["canary"]["plan"]["dwell_s"] == 0.5
        weights: list[str] = []
        served: set[str] = set()
        deadline = time.monotonic() + 60
        for i in range(100_000):
            answer = _chat(client, f"user-{i}")
            assert answer.status_code == 200, answer.text
            served.add(answer.headers["x-aiml-model-version"])
            tag = registry.client.get_model_version("m", "1").tags.get(TAG)
            weight = tag.split()[0].split(":")[1] if tag else "promoted"
            if not weights or weights[-1] != weight:
                weights.append(weight)
            if weight == "promoted":
                break
            assert time.monotonic() < deadline, weights
        assert weights == ["10", "50", "100", "promoted"]
        assert str(registry.client.get_model_version_by_alias("m", "production").version) == "2"
        assert served == {"m/1", "m/2"}
        later = {_chat(client, f"later-{i}").headers["x-aiml-model-version"] for i in range(20)}
        assert later == {"m/2"}
        steps = client.get("/inference/stats").json()["stats"]["rollout_steps"]
    assert [(s["from"], s["to"], s["promoted"]) for s in steps] == [
        (10, 50, False), (50, 100, False), (100, None, True)
    ]  # fmt: skip


def test_a_failing_candidate_is_taken_out_at_its_first_step_and_never_stepped_up(
    registry: Registry, ollama: RunningOllama, start_aiml: Callable[..., RunningAiml]
) -> None:
    ollama.state.add("broken:1b", fails_with="llama runner process has terminated")
    registry.register("m", "llama2:7b", task="chat", alias="production")
    registry.register("m", "broken:1b", task="chat")
    aiml = start_aiml(**GUARD)
    with aiml.client() as client:
        started = client.put(ROUTE, json={"version": 2, "plan": [20, 100], "dwell_s": 0.05})
        assert started.status_code == 200, started.text
        deadline = time.monotonic() + 30
        seen: set[str | None] = set()
        for i in range(100_000):
            _chat(client, f"user-{i}")
            tag = registry.client.get_model_version("m", "1").tags.get(TAG)
            seen.add(tag.split()[0] if tag else None)
            if tag == "2:0":
                break
            assert time.monotonic() < deadline, seen
        assert seen <= {"2:20", "2:0"}  # never at 100
        while not (stats := client.get("/inference/stats").json()["stats"])["guard"]:
            assert time.monotonic() < deadline  # the trip is listed once its writes are done
    assert stats["rollout_steps"] == []
    assert stats["guard"][0]["candidate"] == 2
    assert str(registry.client.get_model_version_by_alias("m", "production").version) == "1"


def test_a_bad_plan_is_refused_by_name(
    registry: Registry, start_aiml: Callable[..., RunningAiml]
) -> None:
    registry.register("m", "llama2:7b", task="chat", alias="production")
    registry.register("m", "llama2:13b", task="chat")
    aiml = start_aiml()
    with aiml.client() as client:
        refused = client.put(ROUTE, json={"version": 2, "plan": [50, 10]})
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["param"] == "plan"
        assert client.get(ROUTE).json()["canary"] is None
