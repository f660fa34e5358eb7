"""The remote case: ``aiml serve`` against a real ``mlflow server`` process.

Registration goes through aiml (the server validates version sources), inference is counted
in registry calls per cold and warm request, and the registry is stopped and restarted under
the service: known references keep being served, and so are the model listings, the front
stays ready (degraded, naming the registry), new references get 503 promptly, and service
resumes when the registry is back.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient

from tests.conftest import RunningOllama
from tests.fakes.processes import Process, aiml_serve, mlflow_server

pytestmark = pytest.mark.slow


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[Process]:
    server = mlflow_server(tmp_path / "mlflow")
    server.start()
    yield server
    server.stop()


def registry_calls(client: httpx.Client) -> int:
    return int(client.get("/inference/stats").json()["stats"]["registry_lookups"])


def stale_served(client: httpx.Client) -> int:
    return int(client.get("/inference/stats").json()["stats"]["cache"]["stale_served"])


def infer(client: httpx.Client, model: str) -> httpx.Response:
    body = {"task": "chat", "engine": "ollama", "model_name": model,
            "data": {"messages": [{"role": "user", "content": "hello"}]}}  # fmt: skip
    return client.post("/inference/infer", json=body)


def test_aiml_serve_against_a_remote_registry(
    tmp_path: Path, remote: Process, ollama: RunningOllama
) -> None:
    registry_url = remote.health_url.removesuffix("/health")
    mlflow = MlflowClient(tracking_uri=registry_url)
    for index in range(30):  # other teams' models: resolution must not depend on them
        mlflow.create_registered_model(f"other-{index:02d}")
    aiml = aiml_serve(
        tmp_path / "aiml",
        env={
            "MLFLOW_TRACKING_URI": registry_url,
            "OLLAMA_HOST": ollama.url,
            "AIML_RESOLVE_TTL_S": "0.5",
        },
    )
    aiml.start()
    try:
        with httpx.Client(
            base_url=aiml.health_url.removesuffix("/health/live"), timeout=30
        ) as client:
            created = client.post(
                "/models/register_ollama",
                json={"local_model_name": "llama2:7b", "registered_name": "llama2-7b-chat",
                      "task": "chat", "alias": "production"},
            )  # fmt: skip
            assert created.status_code == 201, created.text
            # On a server the version's source is its logged model, as MLflow 3 links them.
            source = mlflow.get_model_version("llama2-7b-chat", "1").source
            assert source.startswith("models:/m-")
            assert mlflow.get_logged_model(source.removeprefix("models:/")).status == "READY"
            second = client.post(
                "/models/register_ollama",
                json={"local_model_name": "llama2:13b", "registered_name": "llama2-7b-chat"},
            )
            assert second.json()["version"] == 2

            before = registry_calls(client)
            cold = infer(client, "llama2-7b-chat@production")
            assert cold.status_code == 200, cold.text
            assert registry_calls(client) - before == 1  # cold: one call
            before = registry_calls(client)
            assert infer(client, "llama2-7b-chat@production").status_code == 200
            assert registry_calls(client) == before  # warm: none
            assert (
                infer(client, "llama2-7b-chat/2").json()["resolved"]["engine_model"] == "llama2:13b"
            )

            listings = client.get("/v1/models").json(), client.get("/api/tags").json()
            listed_at = time.monotonic()
            assert "llama2-7b-chat@production" in {m["id"] for m in listings[0]["data"]}

            remote.stop()
            # Requests go on until the 0.5 s TTL lapses and a refresh meets the dead registry:
            # each is answered from the cache, the last one as a stale entry (and the
            # listings' TTL lapses too).
            stopped = time.monotonic()
            while stale_served(client) == 0 or time.monotonic() - listed_at < 0.5:
                assert infer(client, "llama2-7b-chat@production").status_code == 200
                assert time.monotonic() - stopped < 10
            assert infer(client, "llama2-7b-chat/2").status_code == 200  # pinned: no refresh needed
            started = time.monotonic()
            new = infer(client, "llama2-7b-chat")
            assert new.status_code == 503
            assert new.json()["error"]["code"] == "registry_unavailable"
            assert time.monotonic() - started < 2  # promptly, not after MLflow's minutes of retries
            ready = client.get("/health/ready")  # it serves what it served: kept in the fleet
            assert ready.status_code == 200, ready.text
            assert (ready.json()["status"], ready.json()["degraded"]) == ("degraded", ["registry"])
            # The listings are served from what was listed before the registry went away.
            assert (client.get("/v1/models").json(), client.get("/api/tags").json()) == listings

            remote.start()
            assert infer(client, "llama2-7b-chat").status_code == 200
            assert client.get("/health/ready").json()["status"] == "ready"
    finally:
        assert aiml.stop() is not None
