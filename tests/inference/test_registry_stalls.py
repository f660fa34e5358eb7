"""A stalled registry under the whole service: a sqlite file locked by another writer.

A reference resolved before is answered from its (stale) entry once the registry has not
answered within ``AIML_RESOLVE_WAIT_S``, and at once after that while it stalls; a reference
never resolved gets 503 within ``AIML_REGISTRY_TIMEOUT_S``, not after MLflow's 20 s busy
timeout.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from aiml.api.app import create_app
from tests.conftest import Registry, RunningOllama, make_settings
from tests.fakes.servers import ServerThread
from tests.registry.locking import locked


@pytest.fixture(autouse=True)
def _mlflow_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # The service writes MLflow's HTTP bounds into the process environment; undo that after.
    for key, value in {
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "1",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    }.items():
        monkeypatch.setenv(key, value)


def infer(client: httpx.Client, model: str) -> tuple[httpx.Response, float]:
    body = {"task": "text-generation", "engine": "ollama", "model_name": model,
            "data": {"inputs": "hello"}}  # fmt: skip
    started = time.monotonic()
    response = client.post("/inference/infer", json=body)
    return response, time.monotonic() - started


def test_a_locked_sqlite_registry_stalls_no_request_past_the_registry_timeout(
    tmp_path: Path, registry: Registry, ollama: RunningOllama
) -> None:
    registry.register("known", "llama2:7b", alias="prod")
    registry.register("unseen", "llama2:13b")
    settings = make_settings(
        tmp_path,
        registry.uri,
        ollama.url,
        engines="ollama",
        registry_timeout_s=1,
        resolve_ttl_s=0,  # every resolution is past its TTL as soon as it is made
        resolve_wait_s=0.1,  # past it, the registry's answer is waited for this long
    )
    with (
        ServerThread(create_app(settings)) as server,
        httpx.Client(base_url=server.url, timeout=60) as client,
    ):
        warm, _ = infer(client, "known@prod")
        assert warm.status_code == 200, warm.text
        with locked(registry):
            known, known_s = infer(client, "known@prod")
            assert known.status_code == 200, known.text
            assert known.json()["resolved"]["engine_model"] == "llama2:7b"
            assert known_s < 0.5, f"a warm alias past its TTL took {known_s:.2f} s"
            again, again_s = infer(client, "known@prod")  # the registry known slow: at once
            assert again.status_code == 200, again.text
            assert again_s < 0.1, f"a warm alias in a stall took {again_s:.2f} s"
            new, new_s = infer(client, "unseen")
            assert (new.status_code, new.json()["error"]["code"]) == (503, "registry_unavailable")
            assert new_s < 1.5, f"a new reference took {new_s:.2f} s to be refused"
        recovered, _ = infer(client, "unseen")
        assert recovered.status_code == 200, recovered.text
