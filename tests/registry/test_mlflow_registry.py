"""The registry adapter against a real sqlite MLflow registry."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from mlflow import MlflowClient

from aiml.errors import ModelNotFound, RegistryUnavailable
from aiml.registry.mlflow import MlflowRegistry
from aiml.registry.references import parse_reference
from tests.conftest import CountingClient, Registry
from tests.fakes.servers import free_port
from tests.registry.locking import locked


def adapter(registry: Registry) -> tuple[MlflowRegistry, CountingClient]:
    spy = CountingClient(registry.client)
    return MlflowRegistry(spy, uri=registry.uri, artifact_location=None), spy  # type: ignore[arg-type]


async def test_each_form_costs_one_call_among_hundreds(registry: Registry) -> None:
    for index in range(300):
        registry.register(f"filler-{index:03d}", "llama2:7b")
    registry.register("target", "llama2:7b")
    registry.register("target", "llama2:13b", alias="production")
    registry.register("target", "qwen2:0.5b")
    reg, spy = adapter(registry)

    latest = await reg.find_version(parse_reference("target"))
    assert (
        latest is not None
        and latest.version == 3
        and latest.tags["ollama_model_name"] == "qwen2:0.5b"
    )
    aliased = await reg.find_version(parse_reference("target@production"))
    assert aliased is not None and aliased.version == 2
    pinned = await reg.find_version(parse_reference("models:/target/1"))
    assert pinned is not None and pinned.tags["ollama_model_name"] == "llama2:7b"
    assert spy.total == 3
    assert set(spy.calls) == {
        "search_model_versions",
        "get_model_version_by_alias",
        "get_model_version",
    }


async def test_model_tag_is_the_fallback_at_one_extra_call(registry: Registry) -> None:
    registry.register("tagged-on-model", None, model_tags={"ollama_model_name": "llama2:13b"})
    reg, spy = adapter(registry)
    version = await reg.find_version(
        parse_reference("tagged-on-model"), model_tag_keys=("ollama_model_name",)
    )
    assert version is not None and version.tag("ollama_model_name") == "llama2:13b"
    assert spy.total == 2


async def test_absent_things(registry: Registry) -> None:
    registry.register("present", "llama2:7b")
    reg, _ = adapter(registry)
    assert await reg.find_version(parse_reference("absent")) is None  # may be an engine name
    with pytest.raises(ModelNotFound, match="no alias 'prod'"):
        await reg.find_version(parse_reference("present@prod"))
    with pytest.raises(ModelNotFound, match="no version 9"):
        await reg.find_version(parse_reference("present/9"))
    with pytest.raises(ModelNotFound):
        await reg.find_version(parse_reference("absent@prod"))
    with pytest.raises(ModelNotFound):
        await reg.get_model("absent")


async def test_unreachable_remote_registry_is_503_promptly(monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    reg = MlflowRegistry(
        MlflowClient(tracking_uri=uri, registry_uri=uri), uri=uri, artifact_location=None
    )
    started = time.monotonic()
    with pytest.raises(RegistryUnavailable):
        await reg.find_version(parse_reference("anything"))
    assert time.monotonic() - started < 10


async def test_credentials_never_appear_in_messages() -> None:
    reg = MlflowRegistry(
        MlflowClient(tracking_uri="sqlite://"),
        uri="https://user:secret@mlflow.example",
        artifact_location=None,
    )
    assert reg.uri == "https://mlflow.example"


async def test_a_locked_sqlite_registry_answers_within_the_timeout_on_few_threads(
    registry: Registry,
) -> None:
    if not registry.uri.startswith("sqlite"):
        pytest.skip("locks an sqlite file")
    registry.register("m", "llama2:7b")
    before = set(threading.enumerate())
    reg = MlflowRegistry(
        registry.client, uri=registry.uri, artifact_location=None, timeout_s=1, threads=2
    )
    ref = parse_reference("m")
    assert await reg.find_version(ref) is not None
    with locked(registry):
        started = time.monotonic()
        outcomes = await asyncio.gather(
            *(reg.find_version(ref) for _ in range(6)), reg.ping(), return_exceptions=True
        )
        elapsed = time.monotonic() - started
        assert all(isinstance(o, RegistryUnavailable) for o in outcomes), outcomes
        assert "did not answer within 1 s" in str(outcomes[0])
        assert elapsed < 1.5  # MLflow alone waits out its sqlite busy timeout, 20 s
        threads = [t for t in threading.enumerate() if t not in before]
        assert len([t for t in threads if t.name.startswith("aiml-registry")]) <= 2
    found = await reg.find_version(ref)  # the stalled calls end with the lock
    assert found is not None and found.version == 1
