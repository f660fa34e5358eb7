"""MLflow's webhooks end to end: a real ``mlflow server`` on sqlite with webhooks enabled
(loopback allowed, its webhook list cached 1 s), two aiml fronts at a resolve TTL of 300 s,
one subscribed with ``subscribe`` and one with ``aiml webhook register``; an alias moved
with ``MlflowClient`` is served by both within 1 s, and forged and replayed deliveries
change nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet
from mlflow import MlflowClient
from typer.testing import CliRunner

from aiml.cli import app
from aiml.registry.webhooks import subscribe
from tests.conftest import Registry, RunningOllama, launch_aiml
from tests.fakes.processes import Process, mlflow_server
from tests.test_webhooks import MODEL, SECRET, delivery, serves

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mlflow_with_webhooks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    server = mlflow_server(tmp_path_factory.mktemp("mlflow-webhooks"))
    server.env |= {
        "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
        "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",  # the fronts are on loopback
        "MLFLOW_WEBHOOK_CACHE_TTL": "1",  # its list of webhooks, kept 60 s by default
        # Webhook secrets are stored encrypted; without a key each server process makes one
        # of its own, so a restart (or a second worker) could not read them back.
        "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": Fernet.generate_key().decode(),
    }
    server.start()
    yield server
    server.stop()


def test_an_alias_moved_in_mlflow_is_served_by_every_front_within_a_second(
    tmp_path: Path, mlflow_with_webhooks: Process, ollama: RunningOllama
) -> None:
    url = mlflow_with_webhooks.health_url.removesuffix("/health")
    mlflow = MlflowClient(tracking_uri=url)
    registry = Registry(uri=url, client=mlflow, artifacts=tmp_path / "artifacts")
    fronts = [
        launch_aiml(
            tmp_path / f"front-{i}",
            registry,
            ollama,
            resolve_ttl_s=300.0,
            mlflow_webhook_secret=SECRET,
        )
        for i in range(2)
    ]
    try:
        said = subscribe(fronts[0].services.settings, fronts[0].url, name="aiml-front-0")
        assert said[-1] == "  test delivery: ok (200)", said
        env = {"MLFLOW_TRACKING_URI": url, "AIML_MLFLOW_WEBHOOK_SECRET": SECRET,
               "AIML_HOME": str(tmp_path / "cli-home")}  # fmt: skip
        args = ["webhook", "register", "--url", fronts[1].url, "--name", "aiml-front-1"]
        cli = CliRunner().invoke(app, args, env=env)
        assert cli.exit_code == 0 and "test delivery: ok (200)" in cli.output, cli.output
        with fronts[0].client() as client:
            for local, alias in (("llama2:7b", "production"), ("llama2:13b", None)):
                created = client.post("/models/register_ollama", json={
                    "local_model_name": local, "registered_name": MODEL, "task": "chat",
                    "alias": alias})  # fmt: skip
                assert created.status_code == 201, created.text
        for front in fronts:
            assert serves(front) == "llama2:7b"

        moved = time.monotonic()
        mlflow.set_registered_model_alias(MODEL, "production", "2")
        for front in fronts:
            while serves(front) != "llama2:13b":
                assert time.monotonic() - moved < 1.0, "the move was not served within 1 s"
        print(f"\nserved by both fronts {time.monotonic() - moved:.3f} s after the move")

        # Forged and replayed deliveries change nothing: moved in the registry's own file
        # (no webhook sent), a front keeps serving what it served, at no registry call.
        direct = MlflowClient(tracking_uri=f"sqlite:///{mlflow_db(mlflow_with_webhooks)}")
        direct.set_registered_model_alias(MODEL, "production", "1")
        front = fronts[0]
        headers, body = delivery()
        calls = front.spy.total
        with httpx.Client(base_url=front.url) as client:
            forged_headers, forged_body = delivery(secret="guessed")
            forged = client.post("/hooks/mlflow", content=forged_body, headers=forged_headers)
            assert forged.status_code == 401
            assert serves(front) == "llama2:13b" and front.spy.total == calls
            assert client.post("/hooks/mlflow", content=body, headers=headers).status_code == 200
            assert serves(front) == "llama2:7b"
            direct.set_registered_model_alias(MODEL, "production", "2")
            calls = front.spy.total
            replayed = client.post("/hooks/mlflow", content=body, headers=headers)
            assert replayed.status_code == 409
            assert serves(front) == "llama2:7b" and front.spy.total == calls
    finally:
        for front in fronts:
            front.server.stop()


def mlflow_db(server: Process) -> Path:
    backend = server.argv[server.argv.index("--backend-store-uri") + 1]
    return Path(backend.removeprefix("sqlite:///"))
