"""The console's traffic history: rates, ratios and quantiles from counter deltas, a fixed
window, columns for the charts. A fake clock is advanced; nothing sleeps."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pytest

from aiml.inference.admission import Admission
from aiml.observability.history import TrafficHistory, quantile
from aiml.observability.metrics import Metrics
from aiml.observability.stats import Stats


@dataclass
class _SchedulerStats:
    generated_tokens: int = 0


@dataclass
class _Entry:
    key: tuple[str, str, str]
    users: int = 0


@dataclass
class FakePool:
    models: dict[str, _SchedulerStats] = field(default_factory=dict)
    loaded: list[_Entry] = field(default_factory=list)

    def model_stats(self) -> dict[str, Any]:
        return dict(self.models)

    def entries(self) -> list[_Entry]:
        return list(self.loaded)


@dataclass
class Rig:
    history: TrafficHistory
    stats: Stats
    metrics: Metrics
    admission: dict[str, Admission]
    pool: FakePool
    now: list[float]
    calls: list[int]

    def advance(self, seconds: float) -> None:
        self.now[0] += seconds


@pytest.fixture
def rig() -> Rig:
    stats, metrics, pool = Stats(), Metrics(), FakePool()
    admission = {"llamacpp": Admission("llamacpp", limit=2, queue=2)}
    now, calls = [1_000.0], [0]
    history = TrafficHistory(
        stats=stats,
        registry_calls=lambda: calls[0],
        admission=admission,
        pool=pool,  # type: ignore[arg-type]
        latency=metrics.request_duration,
        ttft=metrics.time_to_first_token,
        interval_s=5.0,
        window_s=60.0,
        clock=lambda: now[0],
    )
    return Rig(history, stats, metrics, admission, pool, now, calls)


def test_the_first_reading_is_a_baseline_and_the_next_gives_rates(rig: Rig) -> None:
    assert rig.history.sample() is None  # a rate needs two readings
    s = rig.stats
    s.finished[("chat", "llamacpp", 200)] += 8
    s.finished[("chat", "llamacpp", 500)] += 2
    s.finished[("embeddings", "transformers", 200)] += 5
    s.by_model.update({("smol", 200): 8, ("smol", 500): 2, ("minilm", 200): 5})
    s.tokens[("chat", "llamacpp")] += 400
    s.cache_hits += 9
    s.cache_misses += 1
    s.cancelled += 1
    rig.calls[0] += 3
    rig.admission["llamacpp"].rejected += 10
    rig.admission["llamacpp"].waiting = 2
    rig.pool.models["llamacpp:smol/1"] = _SchedulerStats(generated_tokens=300)
    rig.pool.loaded.append(_Entry(("llamacpp", "smol", "1"), users=2))
    for seconds in [0.02] * 50 + [0.2] * 49 + [7.0]:
        rig.metrics.request_duration.labels("chat", "llamacpp").observe(seconds)
    rig.advance(5)

    point = rig.history.sample()

    assert point is not None and point.t == 1_005.0
    v = point.values
    assert v["requests_per_s"] == {"chat/llamacpp": 2.0, "embeddings/transformers": 1.0}
    assert v["status_per_s"] == {"200": 2.6, "500": 0.4}
    assert v["error_ratio"] == {"chat/llamacpp": 0.2, "embeddings/transformers": 0.0}
    assert v["model_requests_per_s"] == {"smol": 2.0, "minilm": 1.0}
    assert v["model_error_ratio"] == {"smol": 0.2, "minilm": 0.0}
    assert v["tokens_per_s"] == {"chat/llamacpp": 80.0, "model llamacpp:smol/1": 60.0}
    assert v["rejected_per_s"] == {"llamacpp": 2.0}
    assert v["queue_depth"] == {"llamacpp": 2}
    assert v["model_in_use"] == {"llamacpp:smol/1": 2}
    assert v["registry"] == {"lookups_per_s": 0.6, "cache_hit_ratio": 0.9, "cancelled_per_s": 0.2}
    latency = v["latency_s"]
    assert latency["p50"] is not None and 0.01 < latency["p50"] <= 0.025  # the 20 ms bucket
    assert latency["p99"] is not None and 0.1 < latency["p99"] <= 0.25  # the 200 ms bucket
    assert v["ttft_s"] == {"p50": None, "p99": None}  # nothing streamed in this interval


def test_quantiles_and_rates_cover_only_the_interval(rig: Rig) -> None:
    histogram = rig.metrics.request_duration.labels("chat", "llamacpp")
    for _ in range(100):
        histogram.observe(20.0)  # slow requests before the baseline
    rig.stats.finished[("chat", "llamacpp", 200)] += 100
    rig.history.sample()
    for _ in range(10):
        histogram.observe(0.003)
    rig.stats.finished[("chat", "llamacpp", 200)] += 10
    rig.advance(5)
    point = rig.history.sample()
    assert point is not None
    assert point.values["requests_per_s"] == {"chat/llamacpp": 2.0}
    p99 = point.values["latency_s"]["p99"]
    assert p99 is not None and 0.0025 < p99 <= 0.005
    rig.advance(5)
    idle = rig.history.sample()
    assert idle is not None
    assert "requests_per_s" not in idle.values  # nothing finished: no rate to draw
    assert idle.values["registry"]["cache_hit_ratio"] is None


def test_the_window_keeps_the_last_points_only(rig: Rig) -> None:
    rig.history.sample()
    for _ in range(30):
        rig.advance(5)
        rig.history.sample()
    assert len(rig.history.points) == 12  # 60 s / 5 s
    assert rig.history.points[0].t == 1_000.0 + 5 * 19


def test_columns_line_up_and_a_provisional_point_follows_the_last_reading(rig: Rig) -> None:
    rig.history.sample()
    rig.advance(5)
    rig.history.sample()
    rig.stats.finished[("chat", "ollama", 200)] += 4  # a route seen only from now on
    rig.advance(5)
    rig.history.sample()
    stored = rig.history.as_json()
    assert stored["t"] == [1_005.0, 1_010.0]  # no time since the last reading: no extra point
    assert stored["series"]["requests_per_s"] == {"chat/ollama": [0.0, 0.8]}  # rates: 0
    assert stored["interval_s"] == 5.0 and stored["window_s"] == 60.0

    rig.stats.finished[("chat", "ollama", 429)] += 2
    rig.advance(2)
    live = rig.history.as_json()
    assert live["t"] == [1_005.0, 1_010.0, 1_012.0]
    assert live["series"]["status_per_s"] == {"200": [0.0, 0.8, 0.0], "429": [0.0, 0.0, 1.0]}
    assert live["series"]["error_ratio"] == {"chat/ollama": [None, 0.0, 1.0]}  # no ratio: null
    assert len(rig.history.points) == 2  # the provisional point is not stored


def test_quantile_interpolates_like_prometheus() -> None:
    buckets = ((0.1, 10.0), (0.2, 20.0), (math.inf, 20.0))
    assert quantile(0.5, buckets) == 0.1
    assert quantile(0.75, buckets) == 0.15
    assert quantile(0.5, ((1.0, 0.0), (math.inf, 0.0))) is None
    assert quantile(0.99, ((1.0, 1.0), (math.inf, 10.0))) == 1.0  # in +Inf: the last bound


async def test_start_takes_a_baseline_and_aclose_stops_the_sampler(rig: Rig) -> None:
    rig.history.start()
    rig.stats.finished[("chat", "llamacpp", 200)] += 1
    rig.advance(1)
    assert rig.history.as_json()["series"]["requests_per_s"] == {"chat/llamacpp": [1.0]}
    await rig.history.aclose()
    await rig.history.aclose()  # twice is fine
