"""A candidate that fails is taken out by the guard within its window: its weight goes to 0
in the registry (and so on every front), the reason is a tag on the candidate version that
MLflow shows, every later caller is served by the alias's version, and the alias stays."""

from __future__ import annotations

import time
from collections.abc import Callable

from tests.conftest import Registry, RunningAiml, RunningOllama

CHAT = [{"role": "user", "content": "hi"}]
ROUTE = "/models/registered_in_mlflow/m/aliases/production/canary"


def test_a_failing_candidate_is_rolled_back_by_the_guard_with_the_reason_in_mlflow(
    registry: Registry, ollama: RunningOllama, start_aiml: Callable[..., RunningAiml]
) -> None:
    ollama.state.add("broken:1b", fails_with="llama runner process has terminated")
    registry.register("m", "llama2:7b", task="chat", alias="production")
    registry.register("m", "broken:1b", task="chat")
    aiml = start_aiml(guard_check_s=0.05, guard_window_s=30, guard_min_requests=5)
    with aiml.client() as client:
        started = client.put(ROUTE, json={"version": 2, "weight": 50})
        assert started.status_code == 200, started.text
        first_error: float | None = None
        statuses: list[int] = []
        for i in range(400):
            answer = client.post(
                "/v1/chat/completions",
                json={"model": "m@production", "messages": CHAT, "user": f"user-{i}"},
            )
            statuses.append(answer.status_code)
            if answer.status_code >= 500 and first_error is None:
                first_error = time.monotonic()
            tag = registry.client.get_model_version("m", "1").tags["aiml.canary.production"]
            if tag == "2:0":
                break
        assert first_error is not None, statuses
        rolled_back_s = time.monotonic() - first_error
        assert tag == "2:0", statuses  # tripped within the 400 requests
        assert rolled_back_s < 10, rolled_back_s
        deadline = time.monotonic() + 5  # the reason is written right after the weight
        while "aiml.guard.production" not in registry.client.get_model_version("m", "2").tags:
            assert time.monotonic() < deadline
        reason = registry.client.get_model_version("m", "2").tags["aiml.guard.production"]
        assert "5xx ratio" in reason
        assert str(registry.client.get_model_version_by_alias("m", "production").version) == "1"
        later = {
            client.post(
                "/v1/chat/completions",
                json={"model": "m@production", "messages": CHAT, "user": f"later-{i}"},
            ).headers["x-aiml-model-version"]
            for i in range(50)
        }
        assert later == {"m/1"}  # at once: the trip invalidated this front's resolutions
        stats = client.get("/inference/stats").json()["stats"]
        assert stats["guard"][0]["candidate"] == 2
        assert stats["by_version"]["m/2"]["error_ratio"] > 0.5
        print(f"first candidate error -> weight 0 in the registry: {rolled_back_s:.3f} s")
