"""An alias moved in the registry to a version its check refuses stays on its last good
version (the resolver with a stand-in check): held through invalidations, checked once per
version, recovered when the alias names a good one; outages, new aliases, pinned, forced."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence

import pytest

from aiml.engines.remote.ollama import OllamaEngine
from aiml.errors import AimlError, RegistryUnavailable
from aiml.inference.alias_holds import forced_tag
from aiml.inference.alias_moves import Missing
from aiml.inference.resolver import ModelResolver
from aiml.observability.stats import Stats
from aiml.registry.mlflow import MlflowRegistry
from aiml.types import ModelRef, RegistryVersion
from tests.conftest import Registry, RunningOllama
from tests.inference.test_resolver import Clock

PROD = ModelRef("m", alias="prod")


class StandInVet:
    """The alias-move check, as told: refuses the versions in ``refuse``, raises ``error``
    (for a current version too, or only when there is one) and records each call."""

    def __init__(self) -> None:
        self.refuse: set[int] = set()
        self.error: AimlError | None = None
        self.error_with_current_only = False
        self.calls: list[tuple[int | None, int]] = []
        self.opened: asyncio.Event | None = None  # set: each check waits for it

    async def __call__(
        self, current: RegistryVersion | None, target: RegistryVersion
    ) -> Sequence[Missing]:
        self.calls.append((current.version if current else None, target.version))
        if self.opened is not None:
            await self.opened.wait()
        if self.error is not None and (current is not None or not self.error_with_current_only):
            raise self.error
        if target.version in self.refuse:
            reason = f"version {target.version} has no chat template (capability 'chat')"
            return [Missing("capability", "chat", reason)]
        return []


class Setup:
    def __init__(self, registry: Registry, ollama: RunningOllama, wait_s: float = 1.0) -> None:
        adapter = MlflowRegistry(registry.client, uri=registry.uri, artifact_location=None)
        self.engine = OllamaEngine(ollama.url, timeout_s=5, connect_timeout_s=1)
        self.clock = Clock()
        self.vet = StandInVet()
        self.resolver = ModelResolver(
            {"ollama": self.engine}, adapter, ttl_s=30, stats=Stats(), clock=self.clock,
            wait_s=wait_s, vet=self.vet,
        )  # fmt: skip
        assert self.resolver.holds is not None
        self.holds = self.resolver.holds

    async def served(self, ref: ModelRef = PROD) -> int | None:
        """The version a request for ``ref`` gets, once the checks it started have landed."""
        await self.resolver.resolve(ref, "ollama")
        await self.settle()
        return (await self.resolver.resolve(ref, "ollama")).registry_version

    async def settle(self) -> None:
        """Until the checks running, and the lookups their verdicts started, have landed."""
        resolver = self.resolver
        while self.holds._vetting or resolver._inflight:
            running = [task for *_, task in self.holds._vetting.values()]
            await asyncio.gather(*running, *resolver._inflight.values(), return_exceptions=True)

    def expire(self) -> None:
        self.clock.now += 31


@pytest.fixture
async def setup(registry: Registry, ollama: RunningOllama) -> AsyncIterator[Setup]:
    s = Setup(registry, ollama)
    yield s
    s.holds.close()
    await s.engine.aclose()


async def test_a_refused_move_is_held_through_invalidations_and_recovers(
    setup: Setup, registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    registry.register("m", "llama2:7b", task="chat", alias="prod")
    registry.register("m", "nomic-embed-text:latest", task="embeddings")
    registry.register("m", "llama2:13b", task="chat")
    assert await setup.served() == 1
    setup.vet.refuse = {2}
    registry.client.set_registered_model_alias("m", "prod", "2")
    caplog.set_level(logging.WARNING, logger="aiml.resolver")

    setup.expire()
    assert await setup.served() == 1  # version 2 refused: version 1 serves on
    assert setup.vet.calls == [(1, 2)]
    hold = setup.holds.held.snapshot()["m@prod"]
    assert (hold["serving"], hold["refused"], hold["checked"]) == (1, 2, True)
    assert hold["missing"] == [{"kind": "capability", "name": "chat",
        "reason": "version 2 has no chat template (capability 'chat')"}]  # fmt: skip
    assert await setup.resolver.version(PROD) == setup.holds.good(PROD)
    assert await setup.resolver.engine_for(PROD) == "ollama"

    # Re-read each TTL and after an invalidation (a webhook), never checked again: the
    # verdict stands while the version and its tags do; said once.
    setup.expire()
    assert await setup.served() == 1
    setup.resolver.invalidate_name("m")
    assert await setup.served() == 1
    setup.resolver.clear()
    assert await setup.served() == 1
    assert setup.vet.calls == [(1, 2)]
    assert setup.holds.held.refusals == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "m@prod" in warnings[0] and "version 2" in warnings[0] and "chat template" in warnings[0]

    # Its tags changed (a version-tag webhook): checked again, refused again, not said again.
    registry.client.set_model_version_tag("m", "2", "note", "retried")
    setup.resolver.invalidate_name("m")
    assert await setup.served() == 1
    assert setup.vet.calls == [(1, 2), (1, 2)]
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1

    # Moved back: served, the hold ends, nothing to check.
    registry.client.set_registered_model_alias("m", "prod", "1")
    setup.resolver.invalidate_name("m")
    assert await setup.served() == 1
    assert setup.holds.held.snapshot() == {}
    assert len(setup.vet.calls) == 2

    # Held again, then moved on to a version that passes: it serves at once after its check
    # (no TTL to wait for), and the hold ends.
    registry.client.set_registered_model_alias("m", "prod", "2")
    setup.expire()
    assert await setup.served() == 1
    assert "m@prod" in setup.holds.held.snapshot()
    registry.client.set_registered_model_alias("m", "prod", "3")
    setup.expire()
    assert await setup.served() == 3
    assert setup.vet.calls[-1] == (1, 3)
    assert setup.holds.held.snapshot() == {}
    assert setup.holds.good(PROD) is not None and setup.holds.good(PROD).version == 3  # type: ignore[union-attr]
    assert any("ended" in r.getMessage() for r in caplog.records)


async def test_a_check_that_meets_an_outage_holds_only_until_it_can_run(
    setup: Setup, registry: Registry
) -> None:
    registry.register("m", "llama2:7b", task="chat", alias="prod")
    registry.register("m", "llama2:13b", task="chat")
    registry.register("m", "llama2:13b", task="chat")
    assert await setup.served() == 1
    setup.vet.error = RegistryUnavailable("the registry is down")
    registry.client.set_registered_model_alias("m", "prod", "2")
    setup.expire()
    # The pair could not be checked, nor the target alone: version 1 serves on, unchecked.
    assert await setup.served() == 1
    assert setup.vet.calls == [(1, 2), (None, 2)]
    hold = setup.holds.held.snapshot()["m@prod"]
    assert (hold["refused"], hold["checked"]) == (2, False)
    assert hold["missing"][0]["kind"] == "unavailable"
    assert setup.holds.held.refusals == 0  # not a refusal: nothing is known of version 2

    # Not remembered: the next lookup checks again; with the outage over, version 2 serves.
    setup.vet.error = None
    setup.expire()
    assert await setup.served() == 2
    assert setup.vet.calls[-1] == (1, 2)
    assert setup.holds.held.snapshot() == {}

    # Only the current version cannot be read (its engine is down, why it was moved away):
    # the target alone decides.
    setup.vet.error = RegistryUnavailable("version 2's engine is down")
    setup.vet.error_with_current_only = True
    registry.client.set_registered_model_alias("m", "prod", "3")
    setup.expire()
    assert await setup.served() == 3
    assert setup.vet.calls[-2:] == [(2, 3), (None, 3)]


async def test_new_aliases_pinned_latest_and_forced_moves_are_served_as_the_registry_says(
    setup: Setup, registry: Registry
) -> None:
    registry.register("m", "llama2:7b", task="chat", alias="prod")
    registry.register("m", "llama2:13b", task="chat", alias="fresh")
    setup.vet.refuse = {2}
    assert await setup.served(ModelRef("m", alias="fresh")) == 2  # nothing served before it
    assert await setup.served(ModelRef("m", version=2)) == 2
    assert await setup.served(ModelRef("m")) == 2
    assert setup.vet.calls == []

    assert await setup.served() == 1
    registry.client.set_model_version_tag("m", "2", forced_tag("prod"), "true")
    registry.client.set_registered_model_alias("m", "prod", "2")
    setup.expire()
    assert await setup.served() == 2  # forced on purpose: not checked
    assert setup.vet.calls == []
    assert setup.holds.held.snapshot() == {}


async def test_a_slow_check_serves_the_last_good_version_until_it_passes(
    registry: Registry, ollama: RunningOllama
) -> None:
    setup = Setup(registry, ollama, wait_s=0.02)  # a check waited for 10 ms at most
    try:
        registry.register("m", "llama2:7b", task="chat", alias="prod")
        registry.register("m", "llama2:13b", task="chat")
        assert await setup.served() == 1
        setup.vet.opened = asyncio.Event()  # a check that takes long (a download, say)
        registry.client.set_registered_model_alias("m", "prod", "2")
        setup.expire()
        for _ in range(3):  # never waiting for it, nor starting another
            assert (await setup.resolver.resolve(PROD, "ollama")).registry_version == 1
        assert setup.vet.calls == [(1, 2)]
        assert setup.holds.held.snapshot() == {}  # pending, not held
        setup.vet.opened.set()
        await setup.settle()  # its pass looked the alias up again: version 2 serves now
        assert (await setup.resolver.resolve(PROD, "ollama")).registry_version == 2
        assert setup.vet.calls == [(1, 2)]
    finally:
        setup.holds.close()
        await setup.engine.aclose()
