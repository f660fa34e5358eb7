"""The kept listing of every registered model: fresh for the TTL by a controlled clock,
replaced in the background once stale, served on through an outage, and invalidated by
aiml's own changes, a fetch in flight included."""

from __future__ import annotations

import asyncio

import pytest

from aiml.errors import RegistryError, RegistryUnavailable
from aiml.inference.listing import ModelListing
from aiml.registry.entities import RegisteredModelInfo
from tests.inference.test_resolver import Clock


def model(name: str) -> RegisteredModelInfo:
    return RegisteredModelInfo(name=name, description="", tags={}, aliases={}, latest_version=1)


class Registry:
    """What the registry holds, how often it was listed, and whether it answers."""

    def __init__(self, *names: str) -> None:
        self.names = list(names)
        self.fetches = 0
        self.down: Exception | None = None
        self.hold: asyncio.Event | None = None  # while set, a fetch waits for it
        self._fetched = asyncio.Condition()

    async def fetch(self) -> list[RegisteredModelInfo]:
        self.fetches += 1
        names = list(self.names)  # what the registry held when it was asked
        async with self._fetched:
            self._fetched.notify_all()
        if self.hold is not None:
            await self.hold.wait()
        if self.down is not None:
            raise self.down
        return [model(name) for name in names]

    async def asked(self, times: int) -> None:
        """Until the registry has been asked ``times`` times in all."""
        async with self._fetched:
            await self._fetched.wait_for(lambda: self.fetches >= times)


def names(models: list[RegisteredModelInfo]) -> list[str]:
    return [m.name for m in models]


async def settle(listing: ModelListing) -> None:
    """Until the listing's fetch in flight, if any, has finished (failed or not)."""
    fetch = listing.refreshing
    if fetch is not None:
        await asyncio.wait([fetch])


async def test_warm_costs_no_fetch_and_a_stale_listing_is_replaced_in_the_background() -> None:
    registry, clock = Registry("a"), Clock()
    listing = ModelListing(registry.fetch, ttl_s=30, clock=clock)
    assert names(await listing()) == ["a"]
    registry.names.append("b")  # changed in MLflow directly: seen within the TTL
    clock.now += 29
    assert names(await listing()) == ["a"]
    assert registry.fetches == 1
    clock.now += 2
    assert names(await listing()) == ["a"]  # stale: answered at once, refreshed behind it
    await settle(listing)
    assert registry.fetches == 2
    assert names(await listing()) == ["a", "b"]
    assert registry.fetches == 2


async def test_an_outage_serves_the_kept_listing_and_asks_once_a_second() -> None:
    registry, clock = Registry("a"), Clock()
    listing = ModelListing(registry.fetch, ttl_s=1, clock=clock)
    await listing()
    registry.down = RegistryUnavailable("connection refused")
    clock.now += 5
    for _ in range(3):
        assert names(await listing()) == ["a"]
        await settle(listing)
    assert registry.fetches == 2  # one failed refresh, then none within the second
    clock.now += 1.5
    assert names(await listing()) == ["a"]
    await settle(listing)
    assert registry.fetches == 3
    listing.invalidate()  # a change during the outage: the fetch fails, the kept one serves
    assert names(await listing()) == ["a"]
    registry.down = None
    clock.now += 1.5
    await listing()
    await settle(listing)
    assert names(await listing()) == ["a"]
    assert registry.fetches == 5


async def test_a_front_that_never_listed_fails_with_the_registry() -> None:
    registry = Registry("a")
    registry.down = RegistryUnavailable("connection refused")
    listing = ModelListing(registry.fetch, ttl_s=30, clock=Clock())
    with pytest.raises(RegistryUnavailable):
        await listing()
    assert not listing.kept


async def test_a_registry_error_is_not_turned_into_the_kept_listing() -> None:
    registry, clock = Registry("a"), Clock()
    listing = ModelListing(registry.fetch, ttl_s=30, clock=clock)
    await listing()
    registry.down = RegistryError("permission denied")
    listing.invalidate()
    with pytest.raises(RegistryError):
        await listing()


async def test_a_change_through_aiml_is_listed_next_even_with_a_fetch_in_flight() -> None:
    registry, clock = Registry("a"), Clock()
    listing = ModelListing(registry.fetch, ttl_s=30, clock=clock)
    await listing()
    registry.names.append("b")
    listing.invalidate()
    assert names(await listing()) == ["a", "b"]  # waited for the registry, TTL or not

    registry.hold = asyncio.Event()
    listing.invalidate()
    before = asyncio.ensure_future(listing())  # its fetch read the registry before "c"
    await registry.asked(3)
    registry.names.append("c")
    listing.invalidate()  # "c" registered through aiml while that fetch is in flight
    after = asyncio.ensure_future(listing())
    await registry.asked(4)
    registry.hold.set()
    assert names(await before) == ["a", "b"]  # answers its own callers...
    assert names(await after) == ["a", "b", "c"]  # ...but later ones fetched anew
    assert names(await listing()) == ["a", "b", "c"]  # and the older fetch was not kept
    assert registry.fetches == 4


async def test_concurrent_listings_share_one_fetch() -> None:
    registry = Registry("a")
    registry.hold = asyncio.Event()
    listing = ModelListing(registry.fetch, ttl_s=30, clock=Clock())
    waiting = [asyncio.ensure_future(listing()) for _ in range(5)]
    await registry.asked(1)  # the fetch runs after every listing above began waiting
    assert listing.refreshing is not None and not listing.refreshing.done()
    registry.hold.set()
    assert [names(m) for m in await asyncio.gather(*waiting)] == [["a"]] * 5
    assert registry.fetches == 1


async def test_a_change_is_listed_next_though_an_older_fetch_failed_after_it() -> None:
    """A fetch that began before a change through aiml, and failed after it, does not make
    the next listing serve the kept one (from before the change) for the retry second."""
    registry, clock = Registry("a"), Clock()
    listing = ModelListing(registry.fetch, ttl_s=30, clock=clock)
    await listing()
    registry.hold, registry.down = asyncio.Event(), RegistryUnavailable("connection refused")
    clock.now += 31
    assert names(await listing()) == ["a"]  # stale: refreshed in the background, held
    await registry.asked(2)
    registry.names.append("b")
    listing.invalidate()  # "b" registered through aiml while that refresh is in flight
    registry.hold.set()
    await settle(listing)  # the older refresh failed, after the change
    registry.hold, registry.down = None, None
    assert names(await listing()) == ["a", "b"]
    assert registry.fetches == 3
