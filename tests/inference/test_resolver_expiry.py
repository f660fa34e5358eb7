"""Past its TTL a resolution is the registry's answer, stale only while the registry fails or
is slow: a slow lookup is waited for within a bound, an outage is served from a known entry
in use for as long as it lasts, and, end to end with webhooks off, a moved alias is
never served after TTL + 1 s, even to the first request past the TTL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from aiml.errors import RegistryUnavailable
from aiml.types import ModelRef
from tests.conftest import Registry, RunningAiml, RunningOllama
from tests.inference.test_resolver import Gate, Harness, harness

__all__ = ["harness"]  # the fixture, shared with the resolver's other tests


async def test_an_outage_serves_a_known_entry_while_it_lasts_and_used(
    harness: Harness, registry: Registry
) -> None:
    """Stale beats down: each failed re-check keeps a known entry servable ``stale_s`` more,
    so an outage longer than ``stale_s`` does not turn a used alias into 503s; an entry
    nobody asked for in ``stale_s`` of outage is no longer vouched for."""
    registry.register("known", "llama2:7b", alias="prod")
    ref = ModelRef("known", alias="prod")
    assert (await harness.resolver.resolve(ref, "ollama")).engine_model == "llama2:7b"
    expires_at = harness.clock.now + 30
    real = harness.unreachable()
    served = 0
    for past in (0.0, 1.5, 100.0, 299.9, 500.0, 750.0):  # past the 300 s bound, still used
        harness.clock.now = expires_at + past
        assert (await harness.resolver.resolve(ref, "ollama")).engine_model == "llama2:7b"
        await asyncio.gather(*harness.resolver._background)  # re-checked, failing again
        served += 1
        assert harness.stats.stale_served == served
    harness.clock.now += 302  # unused for longer than stale_s after its last failed re-check
    for _ in range(2):
        with pytest.raises(RegistryUnavailable):
            await harness.resolver.resolve(ref, "ollama")
        with pytest.raises(RegistryUnavailable):
            await harness.resolver.version(ref)
    assert harness.stats.stale_served == served
    harness.registry._client = real  # back: the registry's answer, fresh again
    assert (await harness.resolver.resolve(ref, "ollama")).engine_model == "llama2:7b"
    harness.clock.now += 29.9
    calls = harness.spy.total
    assert (await harness.resolver.resolve(ref, "ollama")).engine_model == "llama2:7b"
    assert harness.spy.total == calls


async def test_a_slow_registry_past_the_ttl_serves_the_stale_entry_after_the_wait_bound(
    registry: Registry, ollama: RunningOllama
) -> None:
    harness = Harness(registry, ollama, wait_s=0.05)
    try:
        registry.register("m", "llama2:7b", alias="prod")
        registry.register("m", "llama2:13b")
        ref = ModelRef("m", alias="prod")
        assert (await harness.resolver.resolve(ref, "ollama")).engine_model == "llama2:7b"
        registry.client.set_registered_model_alias("m", "prod", "2")
        gate = Gate(harness.spy, "get_model_version_by_alias")
        harness.registry._client = gate  # type: ignore[assignment]
        harness.clock.now += 31
        calls = harness.spy.total
        try:
            # The lookup is held: after the 0.05 s bound the request is answered stale...
            assert (await harness.resolver.resolve(ref, "ollama")).engine_model == "llama2:7b"
            await gate.reached()
            assert harness.stats.stale_served == 1
            # ...and, the registry being slow, the next ones at once, by no other lookup.
            async with asyncio.timeout(5):  # bounded only so that waiting fails, not hangs
                answers = await asyncio.gather(
                    *(harness.resolver.resolve(ref, "ollama") for _ in range(10))
                )
            assert {a.engine_model for a in answers} == {"llama2:7b"}
            assert (harness.spy.total, harness.stats.stale_served) == (calls + 1, 11)
        finally:
            gate.opened.set()
        await asyncio.gather(*harness.resolver._background)  # the lookup lands,
        checks = harness.stats.engine_checks  # with the engine checked for the new version
        assert (await harness.resolver.resolve(ref, "ollama")).engine_model == "llama2:13b"
        assert (harness.spy.total, harness.stats.engine_checks) == (calls + 1, checks)
        assert harness.stats.stale_served == 11
    finally:
        await harness.engine.aclose()


def test_with_webhooks_off_a_moved_alias_is_never_served_after_the_ttl_plus_one_second(
    start_aiml: Callable[..., RunningAiml], registry: Registry
) -> None:
    ttl = 2.0
    for name in ("steady", "idle"):
        registry.register(name, "llama2:7b", alias="prod")
        registry.register(name, "llama2:13b")
    aiml = start_aiml(resolve_ttl_s=ttl)  # no AIML_MLFLOW_WEBHOOK_SECRET: no webhooks

    with aiml.client() as client:

        def served(model: str) -> tuple[float, int]:
            """When the request was sent, and the registry version that answered it."""
            sent = time.monotonic()
            body = {"task": "text-generation", "engine": "ollama", "model_name": model,
                    "data": {"inputs": "hello"}, "options": {"max_tokens": 1}}  # fmt: skip
            response = client.post("/inference/infer", json=body)
            assert response.status_code == 200, response.text
            return sent, int(response.json()["resolved"]["registry_version"])

        assert served("steady@prod")[1] == served("idle@prod")[1] == 1
        moved_at = time.monotonic()  # taken before the moves: the bound is the stricter
        for name in ("steady", "idle"):  # as a CI pipeline would, behind aiml's back
            registry.client.set_registered_model_alias(name, "prod", "2")
        deadline = moved_at + ttl + 1.0
        answers = []  # steady traffic on one alias, across its TTL and a little past
        while time.monotonic() < deadline + 0.5:
            answers.append(served("steady@prod"))
        late = {version for sent, version in answers if sent >= deadline}
        assert late == {2}, f"the old version answered after TTL + 1 s: {answers}"
        # The other alias had no request since before the move, so nothing refreshed it
        # ahead of its TTL: the very first request past it gets the new version all the same.
        sent, version = served("idle@prod")
        assert sent >= deadline and version == 2
        stats = client.get("/inference/stats").json()["stats"]
        assert stats["cache"]["stale_served"] == 0  # the registry answered: nothing stale
