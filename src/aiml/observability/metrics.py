"""Prometheus metrics, one registry per app (no process-wide singleton).

Counters are read at scrape time from the same objects the stats route reads (``Stats``,
the registry adapter, the admission queues, the model pool), so the two never disagree;
latencies are histograms observed as requests finish.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .key_usage import KeyUsageMetrics
from .sources import AdmissionGauges, PoolGauges

if TYPE_CHECKING:
    from .held_aliases import HeldAliases
    from .stats import Stats
    from .trace_export import TraceExporter

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    """The service's metrics; ``render()`` is the body of ``GET /metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.request_duration = Histogram(
            "aiml_request_duration_seconds",
            "Time from a request's arrival to its last byte, by task and engine.",
            ["task", "engine"],
            buckets=_LATENCY,
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            "aiml_time_to_first_token_seconds",
            "Time from a streamed request's arrival to its first generated text.",
            ["task", "engine"],
            buckets=_LATENCY,
            registry=self.registry,
        )
        self.model_load_duration = Histogram(
            "aiml_model_load_duration_seconds",
            "Time to load a local model into memory.",
            ["engine"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=self.registry,
        )
        #: Requests, errors, tokens and cost per key and team (bounded labels).
        self.key_usage = KeyUsageMetrics(self.registry)

    def watch(
        self,
        stats: Stats,
        registry_calls: Callable[[], int],
        admission: Mapping[str, AdmissionGauges],
        pool: PoolGauges,
    ) -> None:
        self.registry.register(_Live(stats, registry_calls, admission, pool))

    def watch_holds(self, held: HeldAliases) -> None:
        """The aliases held at their last good version (one series each, bounded)."""
        self.registry.register(_Holds(held))

    def watch_traces(self, exporter: TraceExporter) -> None:
        """Traces exported, dropped (queue full) and lost (a destination refused them)."""
        self.registry.register(_Traces(exporter))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Traces(Collector):
    def __init__(self, exporter: TraceExporter) -> None:
        self._exporter = exporter

    def collect(self) -> Iterator[Metric]:
        exporter = self._exporter
        exported = CounterMetricFamily(
            "aiml_traces_exported", "Traces a destination took.", labels=["destination"]
        )
        failed = CounterMetricFamily(
            "aiml_traces_failed",
            "Traces lost because a destination refused them or did not answer.",
            labels=["destination"],
        )
        for destination in exporter.destinations:
            exported.add_metric([destination.name], exporter.exported[destination.name])
            failed.add_metric([destination.name], exporter.failed[destination.name])
        yield exported
        yield failed
        yield CounterMetricFamily(
            "aiml_traces_dropped",
            "Traces dropped because the export queue was full (AIML_TRACE_QUEUE).",
            value=exporter.dropped,
        )
        yield GaugeMetricFamily(
            "aiml_traces_queued", "Traces waiting for export.", value=exporter.queued
        )


class _Holds(Collector):
    def __init__(self, held: HeldAliases) -> None:
        self._held = held

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "aiml_alias_held",
            "1 while an alias is served at its last good version because the version the "
            "registry names cannot serve (checked=false: the check could not run).",
            labels=["model_alias", "serving_version", "refused_version", "checked"],
        )
        for hold in self._held:
            labels = [hold.alias, str(hold.serving), str(hold.refused), str(hold.checked).lower()]
            gauge.add_metric(labels, 1)
        yield gauge
        yield CounterMetricFamily(
            "aiml_alias_move_refusals",
            "Versions an alias was moved to in the registry and held off (each counted once).",
            value=self._held.refusals,
        )


class _Live(Collector):
    def __init__(
        self,
        stats: Stats,
        registry_calls: Callable[[], int],
        admission: Mapping[str, AdmissionGauges],
        pool: PoolGauges,
    ) -> None:
        self._stats = stats
        self._registry_calls = registry_calls
        self._admission = admission
        self._pool = pool

    def collect(self) -> Iterator[Metric]:
        s = self._stats
        requests = CounterMetricFamily(
            "aiml_requests", "Finished requests by task, engine and HTTP status.",
            labels=["task", "engine", "status"],
        )  # fmt: skip
        for (task, engine, status), count in sorted(s.finished.items()):
            requests.add_metric([task, engine, str(status)], count)
        yield requests
        tokens = CounterMetricFamily(
            "aiml_generated_tokens",
            "Tokens generated, by task and engine.",
            labels=["task", "engine"],
        )
        for (task, engine), count in sorted(s.tokens.items()):
            tokens.add_metric([task, engine], count)
        yield tokens
        yield from _versions(s)
        rejected = CounterMetricFamily(
            "aiml_requests_rejected",
            "Requests refused before running, by reason.",
            labels=["reason"],
        )
        for reason, count in sorted(s.rejected.items()):
            rejected.add_metric([reason], count)
        yield rejected
        yield CounterMetricFamily(
            "aiml_registry_lookups",
            "Calls made to the MLflow registry.",
            value=self._registry_calls(),
        )
        yield CounterMetricFamily(
            "aiml_model_cache_hits",
            "References served from the resolution cache.",
            value=s.cache_hits,
        )
        yield CounterMetricFamily(
            "aiml_model_cache_misses", "References that needed a lookup.", value=s.cache_misses
        )
        in_flight = GaugeMetricFamily(
            "aiml_requests_in_flight", "Requests running, by engine.", labels=["engine"]
        )
        queued = GaugeMetricFamily(
            "aiml_queue_depth", "Requests waiting, by engine.", labels=["engine"]
        )
        for engine, gate in sorted(self._admission.items()):
            in_flight.add_metric([engine], gate.running)
            queued.add_metric([engine], gate.waiting)
        yield in_flight
        yield queued
        yield CounterMetricFamily(
            "aiml_requests_cancelled",
            "Requests whose client hung up before the answer; their engine work was stopped.",
            value=s.cancelled,
        )
        evictions = CounterMetricFamily(
            "aiml_model_evictions",
            "Local models unloaded, by reason (room, idle, budget, unload, shutdown).",
            labels=["reason"],
        )
        for reason, count in sorted(self._pool.evictions.items()):
            evictions.add_metric([reason], count)
        yield evictions
        yield CounterMetricFamily(
            "aiml_model_load_failures",
            "Local model loads that failed (nothing of them stays loaded).",
            value=self._pool.load_failures,
        )
        yield GaugeMetricFamily(
            "aiml_loaded_models", "Local models loaded in memory.", value=len(self._pool.entries())
        )
        yield from _batching(self._pool.model_stats())
        yield GaugeMetricFamily(
            "aiml_loaded_model_bytes",
            "Memory counted against the model budget.",
            value=self._pool.used_bytes,
        )


_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def _batching(models: Mapping[str, Any]) -> Iterator[Metric]:
    """Each loaded llama.cpp model's scheduler: sequences running and waiting, tokens per
    second, prompt tokens read and reused, and the batch size of its decode steps."""
    label = ["model"]
    running = GaugeMetricFamily(
        "aiml_llamacpp_sequences_running", "Sequences decoding together.", labels=label
    )
    waiting = GaugeMetricFamily(
        "aiml_llamacpp_sequences_waiting", "Requests waiting for a free sequence.", labels=label
    )
    speed = GaugeMetricFamily(
        "aiml_llamacpp_tokens_per_second", "Generated tokens per second (last 5 s).", labels=label
    )
    prompt = CounterMetricFamily(
        "aiml_llamacpp_prompt_tokens", "Prompt tokens of the requests served.", labels=label
    )
    reused = CounterMetricFamily(
        "aiml_llamacpp_prompt_tokens_reused",
        "Prompt tokens whose KV cache was reused instead of computed.",
        labels=label,
    )
    sizes = HistogramMetricFamily(
        "aiml_llamacpp_batch_size", "Sequences in one decode step.", labels=label
    )
    for model, stats in sorted(models.items()):
        running.add_metric([model], stats.running)
        waiting.add_metric([model], stats.waiting)
        speed.add_metric([model], stats.tokens_per_s)
        prompt.add_metric([model], stats.prompt_tokens)
        reused.add_metric([model], stats.reused_prompt_tokens)
        counts = stats.batch_sizes
        buckets = [
            (str(le), sum(n for size, n in counts.items() if size <= le)) for le in _BATCH_BUCKETS
        ]
        buckets.append(("+Inf", sum(counts.values())))
        total = sum(size * n for size, n in counts.items())
        sizes.add_metric([model], buckets=buckets, sum_value=total)
    yield from (running, waiting, speed, prompt, reused, sizes)


def _versions(stats: Stats) -> Iterator[Metric]:
    """Per registry version: lifetime requests by status, and its window's error ratio and
    latency percentiles (``VersionHealth``'s bounded set of versions)."""
    health = stats.versions
    requests = CounterMetricFamily(
        "aiml_version_requests",
        "Finished requests by registry version (name/version) and HTTP status.",
        labels=["model_version", "status"],
    )
    gauges = {
        key: GaugeMetricFamily(
            f"aiml_version_{key}",
            f"{text}, over the last {health.window_s:g} s, by registry version.",
            labels=["model_version"],
        )
        for key, text in (
            ("error_ratio", "Share of requests answered 5xx"),
            ("latency_p50_seconds", "Median request latency"),
            ("latency_p99_seconds", "99th percentile request latency"),
            ("time_to_first_token_p99_seconds", "99th percentile time to first token"),
            ("tokens_per_second_p50", "Median generated tokens per second"),
        )
    }
    for version, summary in health.summaries().items():
        for status, count in summary["total"].items():
            requests.add_metric([version, status], count)
        values = {
            "error_ratio": summary["error_ratio"],
            "latency_p50_seconds": summary["latency_s"]["p50"],
            "latency_p99_seconds": summary["latency_s"]["p99"],
            "time_to_first_token_p99_seconds": summary["time_to_first_token_s"]["p99"],
            "tokens_per_second_p50": summary["tokens_per_s"]["p50"],
        }
        for key, value in values.items():
            if value is not None:
                gauges[key].add_metric([version], value)
    yield requests
    yield from gauges.values()
