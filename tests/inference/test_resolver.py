"""The resolver: TTL by a controlled clock, single-flight, refresh ahead of the TTL, the
registry's answer past it (stale only while the registry fails or is slow), outages,
invalidation and clear during a lookup."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest

from aiml.engines.remote.ollama import OllamaEngine
from aiml.errors import ModelNotFound, ModelNotServable, RegistryUnavailable
from aiml.inference.resolver import ModelResolver
from aiml.observability.stats import Stats
from aiml.registry.mlflow import MlflowRegistry
from aiml.types import ModelRef, Source
from tests.conftest import CountingClient, Registry, RunningOllama
from tests.fakes.mlflow_client import UnreachableMlflowClient


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Gate:
    """An MLflow client whose first call of ``method`` is held, once it has read the
    registry, until the test opens the gate: a lookup caught in flight."""

    def __init__(self, inner: Any, method: str) -> None:
        self._inner = inner
        self._method = method
        self._armed = True
        self.entered = threading.Event()
        self.opened = threading.Event()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name != self._method:
            return attr

        def held(*args: Any, **kwargs: Any) -> Any:
            result = attr(*args, **kwargs)
            if self._armed:
                self._armed = False
                self.entered.set()
                self.opened.wait(timeout=30)
            return result

        return held

    async def reached(self) -> None:
        """Until the held call has read the registry (a condition, not a guessed delay)."""
        assert await asyncio.to_thread(self.entered.wait, 30)


class Harness:
    def __init__(
        self, registry: Registry, ollama: RunningOllama, ttl_s: float = 30.0, wait_s: float = 30.0
    ) -> None:
        self.spy = CountingClient(registry.client)
        self.registry = MlflowRegistry(self.spy, uri=registry.uri, artifact_location=None)  # type: ignore[arg-type]
        self.engine = OllamaEngine(ollama.url, timeout_s=5, connect_timeout_s=1)
        self.clock = Clock()
        self.stats = Stats()
        # The wait bound is real time (the clock above only says when entries expire): long
        # by default, so a lookup held by a test is waited for, not given up on.
        self.resolver = ModelResolver(
            {"ollama": self.engine},
            self.registry,
            ttl_s=ttl_s,
            stats=self.stats,
            wait_s=wait_s,
            clock=self.clock,
        )

    def unreachable(self) -> Any:
        """Cut the registry off; returns the client to put back."""
        real = self.registry._client
        self.registry._client = UnreachableMlflowClient()  # type: ignore[assignment]
        return real


@pytest.fixture
async def harness(registry: Registry, ollama: RunningOllama) -> AsyncIterator[Harness]:
    h = Harness(registry, ollama)
    yield h
    await h.engine.aclose()


async def test_alias_is_looked_up_again_after_the_ttl_and_pinned_never(
    harness: Harness, registry: Registry
) -> None:
    registry.register("m", "llama2:7b", alias="prod")
    registry.register("m", "llama2:13b")
    assert (
        await harness.resolver.resolve(ModelRef("m", alias="prod"), "ollama")
    ).engine_model == "llama2:7b"
    assert (
        await harness.resolver.resolve(ModelRef("m", version=1), "ollama")
    ).engine_model == "llama2:7b"
    registry.client.set_registered_model_alias("m", "prod", "2")

    harness.clock.now += 24.9  # within the TTL the cached answer stands, at no registry cost
    calls = harness.spy.total
    assert (
        await harness.resolver.resolve(ModelRef("m", alias="prod"), "ollama")
    ).engine_model == "llama2:7b"
    assert harness.spy.total == calls

    harness.clock.now += 5.2  # past it (no request in between): the first one sees the move
    assert (
        await harness.resolver.resolve(ModelRef("m", alias="prod"), "ollama")
    ).engine_model == "llama2:13b"
    assert harness.stats.stale_served == 0
    harness.clock.now += 10_000
    calls = harness.spy.total
    assert (
        await harness.resolver.resolve(ModelRef("m", version=1), "ollama")
    ).engine_model == "llama2:7b"
    assert harness.spy.total == calls  # a pinned version is never looked up again


async def test_fifty_concurrent_first_requests_cost_one_lookup(
    harness: Harness, registry: Registry, ollama: RunningOllama
) -> None:
    registry.register("m", "llama2:7b", alias="prod")
    results = await asyncio.gather(
        *(harness.resolver.resolve(ModelRef("m", alias="prod"), "ollama") for _ in range(50))
    )
    assert {r.engine_model for r in results} == {"llama2:7b"}
    assert harness.spy.total == 1
    assert ollama.state.counts["GET /api/tags"] == 1
    assert harness.stats.resolutions == 1


async def test_failed_lookup_is_shared_and_not_cached(
    harness: Harness, ollama: RunningOllama
) -> None:
    outcomes = await asyncio.gather(
        *(harness.resolver.resolve(ModelRef("ghost"), "ollama") for _ in range(10)),
        return_exceptions=True,
    )
    assert all(isinstance(o, ModelNotFound) for o in outcomes)
    assert harness.stats.resolutions == 1
    ollama.state.add("ghost")
    assert (await harness.resolver.resolve(ModelRef("ghost"), "ollama")).source is Source.DIRECT


async def test_cancelled_caller_does_not_cancel_the_others(
    harness: Harness, registry: Registry, ollama: RunningOllama
) -> None:
    registry.register("m", "llama2:7b")
    ollama.state.delay_s = 0.0
    first = asyncio.ensure_future(harness.resolver.resolve(ModelRef("m"), "ollama"))
    second = asyncio.ensure_future(harness.resolver.resolve(ModelRef("m"), "ollama"))
    await asyncio.sleep(0)
    first.cancel()
    assert (await second).engine_model == "llama2:7b"
    assert harness.stats.resolutions == 1


async def test_outage_serves_known_references_and_refuses_new_ones(
    harness: Harness, registry: Registry
) -> None:
    registry.register("known", "llama2:7b", alias="prod")
    registry.register("new", "llama2:7b")
    registry.register("known", "llama2:13b")
    ref = ModelRef("known", alias="prod")
    assert (await harness.resolver.resolve(ref, "ollama")).engine_model == "llama2:7b"

    real = harness.unreachable()
    harness.clock.now += 31  # expired: the request's lookup fails, the known entry answers
    assert (await harness.resolver.resolve(ref, "ollama")).engine_model == "llama2:7b"
    assert harness.stats.stale_served == 1
    resolutions = harness.stats.resolutions
    harness.clock.now += 0.5  # within the retry interval: served at once, the registry not asked
    assert (await harness.resolver.resolve(ref, "ollama")).engine_model == "llama2:7b"
    assert (harness.stats.stale_served, harness.stats.resolutions) == (2, resolutions)
    assert not harness.resolver._background
    with pytest.raises(RegistryUnavailable):  # never resolved: nothing to serve it from
        await harness.resolver.resolve(ModelRef("new"), "ollama")

    harness.registry._client = real  # back, and the alias moved meanwhile
    registry.client.set_registered_model_alias("known", "prod", "2")
    harness.clock.now += 0.6  # past the retry interval: one re-check, in the background
    assert (await harness.resolver.resolve(ref, "ollama")).engine_model == "llama2:7b"
    await asyncio.gather(*harness.resolver._background)
    assert (await harness.resolver.resolve(ref, "ollama")).engine_model == "llama2:13b"
    assert harness.stats.stale_served == 3


async def test_clear_during_a_lookup_does_not_repopulate(
    harness: Harness, registry: Registry, ollama: RunningOllama
) -> None:
    registry.register("m", "llama2:7b")
    ollama.state.delay_s = 0  # the engine check goes through /api/tags, which has no delay
    pending = asyncio.ensure_future(harness.resolver.resolve(ModelRef("m"), "ollama"))
    await asyncio.sleep(0)
    harness.resolver.clear()
    assert (await pending).engine_model == "llama2:7b"
    assert len(harness.resolver) == 0


async def test_registry_tags_are_honoured(
    harness: Harness, registry: Registry, ollama: RunningOllama
) -> None:
    registry.register("for-hf", "llama2:7b", engine="transformers")
    with pytest.raises(ModelNotServable, match="registered for engine 'transformers'"):
        await harness.resolver.resolve(ModelRef("for-hf"), "ollama")
    registry.register("untagged", None)
    with pytest.raises(ModelNotServable, match="ollama_model_name"):
        await harness.resolver.resolve(ModelRef("untagged"), "ollama")
    registry.register("dangling", "mistral:7b")
    with pytest.raises(ModelNotFound, match="maps to ollama model 'mistral:7b'"):
        await harness.resolver.resolve(ModelRef("dangling"), "ollama")
    resolved = await harness.resolver.resolve(ModelRef("llama2:13b"), "ollama")
    assert resolved.source is Source.DIRECT and resolved.registry_name is None
    assert harness.spy.calls["search_model_versions"] == 3  # engine names skip the registry


async def test_the_version_picks_the_engine_at_no_extra_registry_cost(
    harness: Harness, registry: Registry
) -> None:
    registry.register("m", "llama2:7b", alias="prod")
    registry.register("legacy", "llama2:7b", engine=None)  # no inference_engine tag
    assert await harness.resolver.engine_for(ModelRef("m", alias="prod")) == "ollama"
    calls = harness.spy.total
    resolved = await harness.resolver.resolve(ModelRef("m", alias="prod"), "ollama")
    assert resolved.engine_model == "llama2:7b"
    assert harness.spy.total == calls  # the lookup made for routing served the resolution
    assert await harness.resolver.engine_for(ModelRef("legacy")) == "ollama"  # from its tags
    with pytest.raises(ModelNotFound, match="<engine>/<name>"):
        await harness.resolver.engine_for(ModelRef("nobody-registered-this"))


async def test_a_warm_reference_is_refreshed_before_it_expires(
    harness: Harness, registry: Registry
) -> None:
    registry.register("m", "llama2:7b", alias="prod")
    registry.register("m", "llama2:13b")
    ref = ModelRef("m", alias="prod")
    assert (await harness.resolver.resolve(ref, "ollama")).engine_model == "llama2:7b"
    registry.client.set_registered_model_alias("m", "prod", "2")

    harness.clock.now += 26  # inside the last fifth of the 30 s TTL: still served from cache,
    assert (await harness.resolver.resolve(ref, "ollama")).engine_model == "llama2:7b"
    await asyncio.gather(*harness.resolver._background)  # while a refresh runs behind it
    calls = harness.spy.total
    assert (await harness.resolver.resolve(ref, "ollama")).engine_model == "llama2:13b"
    harness.clock.now += 4.5  # past the first entry's expiry: the refreshed one answers
    assert (await harness.resolver.resolve(ref, "ollama")).engine_model == "llama2:13b"
    assert harness.spy.total == calls  # no request waited for the registry

    real = harness.unreachable()
    harness.clock.now += 25  # a refresh that fails leaves the entry to expire as usual
    assert (await harness.resolver.resolve(ref, "ollama")).engine_model == "llama2:13b"
    await asyncio.gather(*harness.resolver._background)
    assert harness.stats.stale_served == 0  # still fresh: nothing stale was served
    harness.registry._client = real


async def test_past_the_ttl_every_request_waits_for_one_lookup_and_gets_its_answer(
    harness: Harness, registry: Registry
) -> None:
    registry.register("m", "llama2:7b", alias="prod")
    registry.register("m", "llama2:13b")
    ref = ModelRef("m", alias="prod")
    assert (await harness.resolver.resolve(ref, "ollama")).engine_model == "llama2:7b"
    registry.client.set_registered_model_alias("m", "prod", "2")
    gate = Gate(harness.spy, "get_model_version_by_alias")
    harness.registry._client = gate  # type: ignore[assignment]
    harness.clock.now += 31  # past the TTL, no refresh ahead of it (no request came)
    calls = harness.spy.total
    try:
        answers = asyncio.gather(*(harness.resolver.resolve(ref, "ollama") for _ in range(50)))
        await gate.reached()
        assert not answers.done()  # all fifty wait for the one lookup, held here
        assert harness.spy.total == calls + 1
    finally:
        gate.opened.set()
    assert {a.engine_model for a in await answers} == {"llama2:13b"}
    assert (harness.spy.total, harness.stats.stale_served) == (calls + 1, 0)
    assert (await harness.resolver.resolve(ref, "ollama")).engine_model == "llama2:13b"
    assert harness.spy.total == calls + 1  # the new entry answers


async def test_an_invalidation_during_a_lookup_keeps_its_answer_out_of_the_cache(
    harness: Harness, registry: Registry
) -> None:
    registry.register("m", "llama2:7b", alias="prod")
    registry.register("m", "llama2:13b")
    ref = ModelRef("m", alias="prod")
    gate = Gate(harness.spy, "get_model_version_by_alias")
    harness.registry._client = gate  # type: ignore[assignment]
    try:
        first = asyncio.ensure_future(harness.resolver.resolve(ref, "ollama"))
        await gate.reached()  # the lookup has read version 1 and is still in flight
        registry.client.set_registered_model_alias("m", "prod", "2")  # moved, as the admin
        harness.resolver.invalidate_name("m")  # routes do, and the resolver is told
    finally:
        gate.opened.set()
    assert (await first).engine_model == "llama2:7b"  # it asked before the move
    calls = harness.spy.total
    assert (await harness.resolver.resolve(ref, "ollama")).engine_model == "llama2:13b"
    assert harness.spy.total == calls + 1  # what the first lookup read was not kept


async def test_a_request_after_an_invalidation_does_not_join_the_lookup_before_it(
    harness: Harness, registry: Registry
) -> None:
    registry.register("m", "llama2:7b", alias="prod")
    registry.register("m", "llama2:13b")
    ref = ModelRef("m", alias="prod")
    gate = Gate(harness.spy, "get_model_version_by_alias")
    harness.registry._client = gate  # type: ignore[assignment]
    try:
        first = asyncio.ensure_future(harness.resolver.version(ref))
        await gate.reached()
        registry.client.set_registered_model_alias("m", "prod", "2")
        harness.resolver.invalidate(ref)
        # Bounded only so that joining the held lookup fails instead of hanging.
        async with asyncio.timeout(5):
            assert (await harness.resolver.resolve(ref, "ollama")).engine_model == "llama2:13b"
    finally:
        gate.opened.set()
    version = await first
    assert version is not None and version.version == 1
    calls = harness.spy.total
    assert (await harness.resolver.resolve(ref, "ollama")).engine_model == "llama2:13b"
    assert harness.spy.total == calls  # the later lookup's answer is the one kept
