"""The last minutes of traffic, kept in memory for the console's charts (no Prometheus).

Every ``interval_s`` a :class:`TrafficHistory` reads the counters aiml keeps anyway (the
``Stats`` behind ``/inference/stats``, the latency histograms behind ``/metrics``, the
admission queues, the model pool) and stores one :class:`Point`: rates computed from the
counters' change since the previous reading, quantiles from the histograms' bucket changes,
gauges as read. ``window_s / interval_s`` points are kept (15 minutes = 180 points by
default); ``GET /inference/traffic`` returns them as columns, plus a provisional point for
the time since the last reading, so a chart moves before the next one is due.

Readings are cheap (a few dict copies) and happen on the event loop, where the counters are
updated, so one reading is consistent. The clock is injectable: tests advance it instead of
sleeping.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import Histogram

from .sources import AdmissionGauges, PoolGauges

if TYPE_CHECKING:
    from .stats import Stats

__all__ = ["Point", "Reading", "TrafficHistory", "quantile"]

log = logging.getLogger("aiml")

Buckets = tuple[tuple[float, float], ...]  # (upper bound, cumulative count), +Inf last


@dataclass(frozen=True)
class Reading:
    """The cumulative counters and the gauges at one moment."""

    t: float
    finished: Mapping[tuple[str, str, int], int]
    by_model: Mapping[tuple[str, int], int]
    tokens: Mapping[tuple[str, str], int]
    rejected: Mapping[str, int]  # 429s by engine
    queued: Mapping[str, int]
    running: Mapping[str, int]
    registry_calls: int
    cache_hits: int
    cache_misses: int
    cancelled: int
    latency: Buckets
    ttft: Buckets
    model_tokens: Mapping[str, int]  # generated tokens by loaded llama.cpp model
    model_users: Mapping[str, int]  # requests holding each loaded model


@dataclass(frozen=True)
class Point:
    """What happened between two readings; each group maps a label to a value."""

    t: float
    values: Mapping[str, Mapping[str, float | None]] = field(default_factory=dict)


class TrafficHistory:
    def __init__(
        self,
        *,
        stats: Stats,
        registry_calls: Callable[[], int],
        admission: Mapping[str, AdmissionGauges],
        pool: PoolGauges,
        latency: Histogram,
        ttft: Histogram,
        interval_s: float = 5.0,
        window_s: float = 900.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._stats = stats
        self._registry_calls = registry_calls
        self._admission = admission
        self._pool = pool
        self._latency = latency
        self._ttft = ttft
        self.interval_s = interval_s
        self.window_s = window_s
        self._clock = clock
        self.points: deque[Point] = deque(maxlen=max(1, round(window_s / interval_s)))
        self._last: Reading | None = None
        self._task: asyncio.Task[None] | None = None

    # -- sampling ---------------------------------------------------------------------------

    def read(self) -> Reading:
        s = self._stats
        models = self._pool.model_stats()
        return Reading(
            t=self._clock(),
            finished=dict(s.finished),
            by_model=dict(s.by_model),
            tokens=dict(s.tokens),
            rejected={name: gate.rejected for name, gate in self._admission.items()},
            queued={name: gate.waiting for name, gate in self._admission.items()},
            running={name: gate.running for name, gate in self._admission.items()},
            registry_calls=self._registry_calls(),
            cache_hits=s.cache_hits,
            cache_misses=s.cache_misses,
            cancelled=s.cancelled,
            latency=_buckets(self._latency),
            ttft=_buckets(self._ttft),
            model_tokens={
                name: int(getattr(m, "generated_tokens", 0)) for name, m in models.items()
            },
            model_users={
                f"{e.key[0]}:{e.key[1]}/{e.key[2]}": e.users for e in self._pool.entries()
            },
        )

    def sample(self) -> Point | None:
        """Read the counters now and store the point since the last reading (none the first
        time: a rate needs two readings)."""
        reading = self.read()
        previous, self._last = self._last, reading
        if previous is None:
            return None
        point = between(previous, reading)
        self.points.append(point)
        return point

    def start(self) -> None:
        """Take the first reading and sample every ``interval_s`` (needs a running loop)."""
        self.sample()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="traffic-history")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                self.sample()
            except Exception:  # a bug here must not end the sampling for good
                log.exception("traffic history: reading the counters failed")

    # -- reading ----------------------------------------------------------------------------

    def as_json(self, *, provisional: bool = True) -> dict[str, Any]:
        """The stored points as columns (``t`` and, per group, per label, one value per
        point; ``null`` where a label had no value), oldest first."""
        points = list(self.points)
        if provisional and self._last is not None:
            now = self.read()
            if now.t - self._last.t >= 0.5:
                points.append(between(self._last, now))
        groups: dict[str, dict[str, list[float | None]]] = {}
        for index, point in enumerate(points):
            for group, values in point.values.items():
                columns = groups.setdefault(group, {})
                missing = 0.0 if group in _RATES else None  # no request: a rate of 0
                for label, value in values.items():
                    column = columns.setdefault(label, [missing] * len(points))
                    column[index] = value
                for label, column in columns.items():
                    if label not in values:
                        column[index] = missing
        return {
            "interval_s": self.interval_s,
            "window_s": self.window_s,
            "t": [round(p.t, 3) for p in points],
            "series": {g: dict(sorted(c.items())) for g, c in sorted(groups.items())},
        }


#: Groups of rates: a label missing from a point had nothing to count, a rate of 0 (where
#: ratios and quantiles had nothing to measure: null).
_RATES = frozenset(
    {"requests_per_s", "model_requests_per_s", "status_per_s", "tokens_per_s", "rejected_per_s"}
)


def between(a: Reading, b: Reading) -> Point:
    """The rates, ratios, quantiles and gauges for the time from reading ``a`` to ``b``."""
    dt = max(b.t - a.t, 1e-9)

    def rate(now: int | float, before: int | float) -> float:
        return round(max(now - before, 0) / dt, 4)

    by_route: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    by_status: Counter[str] = Counter()
    for key, count in b.finished.items():
        task, engine, status = key
        delta = count - a.finished.get(key, 0)
        if delta <= 0:
            continue
        by_route[f"{task}/{engine}"] += delta
        by_status[str(status)] += delta
        if status >= 400:
            failed[f"{task}/{engine}"] += delta
    errors = {route: round(failed[route] / n, 4) for route, n in by_route.items()}
    model_n: Counter[str] = Counter()
    model_failed: Counter[str] = Counter()
    for (model, status), count in b.by_model.items():
        delta = count - a.by_model.get((model, status), 0)
        if delta > 0:
            model_n[model] += delta
            model_failed[model] += delta if status >= 400 else 0
    tokens = {f"{t}/{e}": rate(n, a.tokens.get((t, e), 0)) for (t, e), n in b.tokens.items()}
    # A model loaded since reading ``a`` generated all its tokens in this interval.
    tokens.update(
        {f"model {m}": rate(n, a.model_tokens.get(m, 0)) for m, n in b.model_tokens.items()}
    )
    hits = b.cache_hits - a.cache_hits
    lookups = hits + b.cache_misses - a.cache_misses
    values: dict[str, Mapping[str, float | None]] = {
        "requests_per_s": {k: round(n / dt, 4) for k, n in by_route.items()},
        "status_per_s": {k: round(n / dt, 4) for k, n in by_status.items()},
        "error_ratio": errors,
        "model_requests_per_s": {m: round(n / dt, 4) for m, n in model_n.items()},
        "model_error_ratio": {m: round(model_failed[m] / n, 4) for m, n in model_n.items()},
        "latency_s": _quantiles(a.latency, b.latency),
        "ttft_s": _quantiles(a.ttft, b.ttft),
        "tokens_per_s": tokens,
        "queue_depth": dict(b.queued),
        "running": dict(b.running),
        "rejected_per_s": {e: rate(n, a.rejected.get(e, 0)) for e, n in b.rejected.items()},
        "registry": {
            "lookups_per_s": rate(b.registry_calls, a.registry_calls),
            "cache_hit_ratio": round(hits / lookups, 4) if lookups > 0 else None,
            "cancelled_per_s": rate(b.cancelled, a.cancelled),
        },
        "model_in_use": dict(b.model_users),
    }
    return Point(t=b.t, values={k: v for k, v in values.items() if v})


def _quantiles(a: Buckets, b: Buckets) -> dict[str, float | None]:
    before = dict(a)
    delta = tuple((le, count - before.get(le, 0.0)) for le, count in b)
    return {"p50": quantile(0.5, delta), "p99": quantile(0.99, delta)}


def quantile(q: float, buckets: Buckets) -> float | None:
    """Prometheus' ``histogram_quantile``: the bucket holding the rank, interpolated
    linearly inside it; the highest finite bound when the rank is in ``+Inf``."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return lower
            inside = count - below
            fraction = (rank - below) / inside if inside > 0 else 1.0
            return round(lower + (le - lower) * fraction, 6)
        lower, below = le, count
    return lower


def _buckets(histogram: Histogram) -> Buckets:
    """The histogram's cumulative bucket counts, summed over its label sets."""
    totals: dict[float, float] = {}
    for metric in histogram.collect():
        for le, count in _bucket_samples(metric.samples):
            totals[float(le)] = totals.get(float(le), 0.0) + count
    return tuple(sorted(totals.items()))


def _bucket_samples(samples: Iterable[Any]) -> Iterable[tuple[str, float]]:
    for sample in samples:
        if sample.name.endswith("_bucket"):
            yield sample.labels["le"], sample.value
