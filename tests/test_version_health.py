"""VersionHealth on a controllable clock: the window slides, the set of versions is bounded,
percentiles are nearest-rank, only 5xx counts against a version."""

from __future__ import annotations

import pytest

from aiml.observability.version_health import VersionHealth


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_versions_window_slides_and_its_totals_stay() -> None:
    clock = Clock()
    health = VersionHealth(window_s=60, clock=clock)
    for seconds in (0.1, 0.2, 0.3, 0.4):
        health.record("m/1", 200, seconds, tokens=10)
    health.record("m/1", 502, 1.0)
    health.record("m/1", 400, 0.05)  # the caller's mistake, not the version's
    summary = health.summary("m/1")
    assert summary is not None
    assert summary["requests"] == 6
    assert summary["by_status"] == {"200": 4, "400": 1, "502": 1}
    assert summary["error_ratio"] == round(1 / 6, 4)
    assert summary["latency_s"] == {"p50": 0.2, "p99": 1.0}
    # 100, 50, 33.3 and 25 tokens/s: the nearest-rank median is the second, 10 tokens in 0.3 s
    assert summary["tokens_per_s"]["p50"] == pytest.approx(10 / 0.3, abs=1e-5)
    assert summary["time_to_first_token_s"] == {"p50": None, "p99": None}
    clock.now += 61
    health.record("m/1", 200, 0.5, first_token_s=0.25)
    later = health.summary("m/1")
    assert later is not None
    assert later["requests"] == 1
    assert later["latency_s"] == {"p50": 0.5, "p99": 0.5}
    assert later["time_to_first_token_s"] == {"p50": 0.25, "p99": 0.25}
    assert later["total"] == {"200": 5, "400": 1, "502": 1}


def test_the_least_recently_served_version_goes_first() -> None:
    health = VersionHealth(max_versions=2, clock=Clock())
    health.record("m/1", 200, 0.1)
    health.record("m/2", 200, 0.1)
    health.record("m/1", 200, 0.1)  # m/1 served again: m/2 is now the oldest
    health.record("m/3", 200, 0.1)
    assert health.versions() == ["m/1", "m/3"]
    assert health.summary("m/2") is None


def test_samples_per_version_are_bounded() -> None:
    health = VersionHealth(max_samples=3, clock=Clock())
    for seconds in (9.0, 1.0, 2.0, 3.0):
        health.record("m/1", 200, seconds)
    summary = health.summary("m/1")
    assert summary is not None
    assert summary["requests"] == 3
    assert summary["latency_s"]["p99"] == 3.0  # the 9 s one fell out
