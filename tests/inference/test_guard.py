"""The canary guard on VersionHealth with a controllable clock: a candidate answering errors,
or much slower, is tripped once, after its minimum of requests in the window, and only
then; a stable version's own errors are no reason; a refused trip is tried again."""

from __future__ import annotations

import pytest

from aiml.inference.canary import RunningCanary
from aiml.inference.guard import CanaryGuard, GuardLimits, GuardTrip
from aiml.observability.version_health import VersionHealth

CANARY = RunningCanary("m", "production", stable=1, candidate=2, weight=10)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Harness:
    def __init__(self, limits: GuardLimits | None = None) -> None:
        self.clock = Clock()
        self.health = VersionHealth(clock=self.clock)
        self.running = [CANARY]
        self.tripped: list[GuardTrip] = []
        self.refuse = False
        self.guard = CanaryGuard(self.health, lambda: self.running, self._trip, limits=limits)

    async def _trip(self, trip: GuardTrip) -> None:
        if self.refuse:
            raise RuntimeError("the registry refused")
        self.tripped.append(trip)

    def serve(self, version: int, n: int, status: int = 200, seconds: float = 0.05) -> None:
        for _ in range(n):
            self.health.record(f"m/{version}", status, seconds)


async def test_a_failing_candidate_is_tripped_once_after_its_minimum_of_requests() -> None:
    h = Harness()
    h.serve(1, 90)
    h.serve(2, 9, status=502)  # nine errors: under the minimum of ten, no verdict yet
    assert await h.guard.check() == []
    h.serve(2, 1, status=502)
    tripped = await h.guard.check()
    assert [t.canary for t in tripped] == [CANARY]
    assert "5xx ratio 100%" in tripped[0].reason
    assert await h.guard.check() == []  # once
    assert h.guard.report()[0]["candidate"] == 2


async def test_errors_the_stable_version_has_too_are_no_reason() -> None:
    h = Harness()
    h.serve(1, 50, status=503)
    h.serve(1, 50)
    h.serve(2, 5, status=503)
    h.serve(2, 5)  # 50% like the stable version
    assert await h.guard.check() == []


async def test_a_much_slower_candidate_is_tripped_and_noise_is_not() -> None:
    h = Harness()
    h.serve(1, 50, seconds=0.01)
    h.serve(2, 50, seconds=0.025)  # 2.5x, and 15 ms: neither past its limit
    assert await h.guard.check() == []
    h.serve(2, 10, seconds=2.0)  # p99 2 s against 10 ms
    tripped = await h.guard.check()
    assert len(tripped) == 1
    assert "p99 latency 2.000 s" in tripped[0].reason


async def test_the_window_forgets_old_failures() -> None:
    h = Harness(GuardLimits(window_s=60))
    h.serve(2, 20, status=502)
    h.clock.now += 61
    h.serve(1, 20)
    h.serve(2, 20)
    assert await h.guard.check() == []


async def test_a_canary_at_weight_zero_is_not_watched_and_a_refused_trip_is_retried() -> None:
    h = Harness()
    h.serve(2, 20, status=502)
    h.running = [RunningCanary("m", "production", stable=1, candidate=2, weight=0)]
    assert await h.guard.check() == []
    h.running = [CANARY]
    h.refuse = True
    assert await h.guard.check() == []
    h.refuse = False
    assert len(await h.guard.check()) == 1


@pytest.mark.parametrize("requests", [0, 3])
async def test_a_candidate_with_too_few_requests_has_no_verdict(requests: int) -> None:
    h = Harness()
    h.serve(2, requests, status=500)
    assert h.guard.verdict(CANARY) is None
