"""Injected faults: each gives the right status in time, nothing hangs or leaks, and service
resumes within a second of the part coming back.

(Also elsewhere: a model whose load fails, test_local_api; an error reported mid-stream,
test_openai_api and test_ollama_api; a slow engine past its deadline, test_backpressure.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from aiml.errors import EngineUnavailable, RegistryUnavailable
from aiml.inference import manager as manager_module
from aiml.inference.limits import Limits
from aiml.inference.manager import InferenceManager
from aiml.inference.readiness import RequiredEngines
from aiml.inference.router import TaskRouter
from aiml.observability.metrics import Metrics
from aiml.observability.stats import Stats
from tests.conftest import ModelFiles, Registry, RunningAiml, RunningOllama
from tests.fakes.mlflow_client import UnreachableMlflowClient
from tests.inference.test_resolver import Clock

CHAT = {"task": "chat", "engine": "ollama", "model_name": "llama2-7b-chat",
        "data": {"messages": [{"role": "user", "content": "one two three"}]}}  # fmt: skip


def first_success_after(client: httpx.Client, body: dict[str, object], since: float) -> float:
    """Seconds from ``since`` until ``body`` succeeds (retrying as a client would)."""
    while client.post("/inference/infer", json=body).status_code != 200:
        assert time.monotonic() - since < 5.0
    return time.monotonic() - since


def test_ollama_crashing_mid_stream_then_going_away_then_coming_back(
    start_aiml: Callable[..., RunningAiml], registry: Registry, ollama: RunningOllama
) -> None:
    registry.register("llama2-7b-chat", "llama2:7b", alias="production")
    aiml = start_aiml()
    with aiml.client() as client:
        ollama.state.abort_mid_stream = True
        started = time.monotonic()
        cut = client.post("/inference/infer", json={**CHAT, "stream": True})
        lines = cut.text.strip().splitlines()
        assert '"engine_unavailable"' in lines[-1]  # the connection dropped: said in the stream
        assert time.monotonic() - started < 2.0
        ollama.state.abort_mid_stream = False

        ollama.server.stop()
        down = client.post("/inference/infer", json=CHAT)
        assert (down.status_code, down.json()["error"]["code"]) == (503, "engine_unavailable")
        ollama.server.start()
        assert first_success_after(client, CHAT, time.monotonic()) < 1.0
        stats = client.get("/inference/stats").json()["stats"]
        assert set(stats["in_flight"].values()) == {0}  # every engine's slot given back


def test_the_registry_going_away_mid_load(
    start_aiml: Callable[..., RunningAiml], registry: Registry, model_files: ModelFiles
) -> None:
    registry.register_files(model_files.tiny_lm_a, "lm")
    aiml = start_aiml()
    adapter = aiml.services.registry
    real = adapter._client

    class DownloadFails:
        """The version is found, then the registry is gone when its files are fetched."""

        def __getattr__(self, name: str) -> object:
            if name == "get_model_version_download_uri":
                return UnreachableMlflowClient().__getattr__(name)
            return getattr(real, name)

    body = {"task": "text-generation", "engine": "transformers", "model_name": "lm",
            "data": {"inputs": "the cat"}, "options": {"max_tokens": 3}}  # fmt: skip
    adapter._client = DownloadFails()  # type: ignore[assignment]
    with aiml.client() as client:
        started = time.monotonic()
        failed = client.post("/inference/infer", json=body)
        assert (failed.status_code, failed.json()["error"]["code"]) == (503, "registry_unavailable")
        assert time.monotonic() - started < 2.0
        assert client.get("/inference/loaded").json()["models"] == []  # nothing half-loaded
        cache = aiml.services.artifacts.root
        assert not (cache / "lm").exists()
        assert not any((cache / ".staging").iterdir())
        adapter._client = real  # back
        assert first_success_after(client, body, time.monotonic()) < 1.0


def test_a_stream_failing_midway_releases_everything(
    start_aiml: Callable[..., RunningAiml], registry: Registry, ollama: RunningOllama
) -> None:
    registry.register("llama2-7b-chat", "llama2:7b")
    aiml = start_aiml(max_in_flight=1, max_queue=0)
    ollama.state.fail_mid_stream = "out of memory"
    with aiml.client() as client:
        for _ in range(3):  # with one slot, a leaked slot would turn the next ones into 429s
            broken = client.post("/inference/infer", json={**CHAT, "stream": True})
            assert broken.status_code == 200
            assert "out of memory" in broken.text.strip().splitlines()[-1]
        ollama.state.fail_mid_stream = None
        assert client.post("/inference/infer", json=CHAT).status_code == 200


def test_a_slow_stream_stops_at_its_deadline(
    start_aiml: Callable[..., RunningAiml], registry: Registry, ollama: RunningOllama
) -> None:
    registry.register("llama2-7b-chat", "llama2:7b")
    aiml = start_aiml(ollama_timeout_s=30.0)
    ollama.state.token_delay_s = 0.5
    long_prompt = {**CHAT, "data": {"messages": [{"role": "user", "content": "word " * 50}]}}
    with aiml.client() as client:
        started = time.monotonic()
        slow = client.post("/inference/infer", json={**long_prompt, "stream": True},
                           headers={"x-request-timeout": "1.2"})  # fmt: skip
        assert time.monotonic() - started < 2.5
        assert '"deadline_exceeded"' in slow.text.strip().splitlines()[-1]
    deadline = time.monotonic() + 2
    while ollama.state.streams_closed_early == 0:  # and the Ollama request was closed
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_a_hanging_registry_is_bounded_by_the_deadline_on_every_surface(
    start_aiml: Callable[..., RunningAiml], registry: Registry
) -> None:
    registry.register("llama2-7b-chat", "llama2:7b", task="chat")
    aiml = start_aiml()
    adapter = aiml.services.registry
    real = adapter._client

    class Hanging:
        def __getattr__(self, name: str) -> object:
            method = getattr(real, name)

            def slow(*args: object, **kwargs: object) -> object:
                time.sleep(3)  # a registry that accepts the connection and then stalls
                return method(*args, **kwargs)

            return slow

    adapter._client = Hanging()  # type: ignore[assignment]
    calls = [
        (
            "/v1/chat/completions",
            {"model": "llama2-7b-chat", "messages": [{"role": "user", "content": "x"}]},
        ),
        ("/api/chat", {"model": "llama2-7b-chat", "messages": [{"role": "user", "content": "x"}]}),
        ("/inference/infer", CHAT),
    ]
    with aiml.client() as client:
        for path, body in calls:
            started = time.monotonic()
            response = client.post(path, json=body, headers={"x-request-timeout": "0.5"})
            assert response.status_code == 504, (path, response.text)
            assert time.monotonic() - started < 1.5, path
        stats = client.get("/inference/stats").json()["stats"]
    assert stats["by_status"]["504"] == 3  # counted, though two never reached an engine
    adapter._client = real


def test_a_registry_outage_leaves_a_front_that_served_ready_and_listing(
    start_aiml: Callable[..., RunningAiml], registry: Registry, tmp_path: Path
) -> None:
    registry.register("llama2-7b-chat", "llama2:7b", task="chat", alias="production")
    warm, cold = start_aiml(), start_aiml(home=tmp_path / "cold-home")
    with warm.client() as client:
        assert client.post("/inference/infer", json=CHAT).status_code == 200
        listing = client.get("/v1/models").json()
        tags = client.get("/api/tags").json()
        assert client.get("/health/ready").json()["status"] == "ready"
    for aiml in (warm, cold):  # the registry goes away under both fronts
        aiml.services.registry._client = UnreachableMlflowClient()  # type: ignore[assignment]
    with warm.client() as client:
        ready = client.get("/health/ready")
        assert ready.status_code == 200, ready.text
        assert ready.json()["status"] == "degraded"
        assert ready.json()["degraded"] == ["registry"]
        assert client.post("/inference/infer", json=CHAT).status_code == 200
        assert client.get("/v1/models").json() == listing
        assert client.get("/api/tags").json() == tags
        assert client.get("/inference/health").status_code == 503  # reachability, as before
    with cold.client() as client:  # never resolved nor listed: nothing it could serve
        ready = client.get("/health/ready")
        assert ready.status_code == 503
        assert "registry" in ready.json()["degraded"]
        listed = client.get("/v1/models")
        assert (listed.status_code, listed.json()["error"]["code"]) == (503, "registry_unavailable")


async def test_the_engines_readiness_needs_stay_known_through_a_registry_outage() -> None:
    class TaggingRegistry:  # tags an Ollama model, then goes away
        down = False

        async def any_version_tagged(self, key: str, value: str) -> bool:
            if self.down:
                raise RegistryUnavailable("connection refused")
            return True

    class Remote:
        in_process = False

    registry, clock = TaggingRegistry(), Clock()
    engines = {"ollama": Remote()}
    required = RequiredEngines("auto", engines, registry, ttl_s=5, clock=clock)  # type: ignore[arg-type]
    assert await required() == {"ollama"}
    registry.down = True
    clock.now += 10
    assert await required() == {"ollama"}  # the last answer, not a guess nor an error


async def test_the_engines_readiness_needs_stay_known_while_the_registry_hangs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A registry that hangs (no error, no answer) past the health probe's bound leaves the
    required engines at the registry's last answer: an optional engine that is down keeps
    the front ready, as with a registry that refuses connections."""

    class HangingRegistry:  # answers until told to hang; a hung call waits for release
        def __init__(self) -> None:
            self.release = asyncio.Event()
            self.hanging = False
            self.tagged = 0  # how often it was asked which engines its versions use

        async def _answer(self) -> None:
            if self.hanging:
                await self.release.wait()

        async def ping(self) -> None:
            await self._answer()

        async def any_version_tagged(self, key: str, value: str) -> bool:
            self.tagged += 1
            await self._answer()
            return value == "ollama"

    class Remote:
        in_process = False
        tasks: frozenset[str] = frozenset()
        model_tag_keys: tuple[str, ...] = ()

        def __init__(self, up: bool) -> None:
            self.up = up

        async def health(self) -> None:
            if not self.up:
                raise EngineUnavailable("connection refused")

    monkeypatch.setattr(manager_module, "_HEALTH_TIMEOUT_S", 0.05)  # the probe's bound, short
    registry, clock, stats = HangingRegistry(), Clock(), Stats()
    engines = {"ollama": Remote(up=True), "openai": Remote(up=False)}
    required = RequiredEngines("auto", engines, registry, ttl_s=5, clock=clock)  # type: ignore[arg-type]
    router = TaskRouter(engines, registry, ttl_s=5, stats=stats)  # type: ignore[arg-type]
    limits = Limits(max_prompt_chars=1, max_tokens=1, max_embed_inputs=1, max_image_bytes=1)
    manager = InferenceManager(
        router, registry, stats, limits=limits, admission={}, metrics=Metrics(),  # type: ignore[arg-type]
        request_timeout_s=5, required_engines=required,
    )  # fmt: skip
    assert (await manager.health()).required == {"ollama"}
    registry.hanging = True
    clock.now += 10  # the kept answer is due for renewal: the registry is asked, and hangs
    for _ in range(3):
        report = await manager.health()
        assert report.required == {"ollama"}, report  # the last answer, not every engine
        assert report.registry is not None
        assert report.engines == {"ollama": None, "openai": "connection refused"}
    assert registry.tagged == 2 * 2  # each engine asked once more, not on every probe
    registry.release.set()
