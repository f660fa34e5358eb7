"""Served traces linked to their version's MLflow 3 logged model, so MLflow's own UI shows
a model's traffic on its page (and ``search_traces(model_id=...)`` finds it).

MLflow links a trace to a logged model by the trace's metadata ``mlflow.modelId``, and
its OTLP endpoint writes no metadata from spans (MLflow 3.17's ``log_spans`` takes tags,
token usage, session and user from them, nothing else). So once a batch's spans are in,
each trace of a version that has a logged model gets one ``start_trace`` call, the call
MLflow's own tracer makes with an active model, which MLflow merges into the trace the
spans made. Not before the spans, though that is cheaper for MLflow (its merge is a failed
insert, a rollback and a row lock): until they arrive such a trace reads as one whose spans
are in artifacts (MLflow 3.18's client then fails to fetch them), and stays so if the post
fails.

It is one more MLflow call a trace (``AIML_TRACE_LINK_MODELS`` turns it off): measured in
docs/benchmarks.md (bench.traces, configuration ``L``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from mlflow.entities import TraceInfo, TraceLocation, TraceState
from mlflow.tracing.client import TracingClient
from mlflow.tracing.constant import TraceMetadataKey, TraceTagKey

from aiml.observability.tracing import RequestTrace

__all__ = ["TraceLinks"]

log = logging.getLogger("aiml.traces")


class TraceLinks:
    """Links traces to logged models on the MLflow server at ``tracking_uri``, in aiml's
    trace experiment (``experiment_id``, found once the server answers). Blocking: it runs
    in the exporter's thread."""

    name = "mlflow-links"

    def __init__(self, tracking_uri: str, experiment_id: Callable[[], str]) -> None:
        self._client = TracingClient(tracking_uri=tracking_uri)
        self._experiment_id = experiment_id

    def wanted(self, trace: RequestTrace) -> bool:
        """Whether ``trace`` has a logged model to be linked to."""
        return trace.logged_model is not None

    def send(self, batch: Sequence[RequestTrace]) -> None:
        """Link each trace of ``batch`` (all :meth:`wanted`) to its logged model; MLflow's
        error (or an unreachable server) propagates, and the exporter counts the batch
        failed (those linked before the error included)."""
        location = TraceLocation.from_experiment_id(self._experiment_id())
        for trace in batch:
            self._client.start_trace(info_of(trace, location))


def info_of(trace: RequestTrace, location: TraceLocation) -> TraceInfo:
    """The trace's MLflow record as its spans make it, with the logged model's link."""
    assert trace.logged_model is not None
    return TraceInfo(
        trace_id=trace.mlflow_id,
        trace_location=location,
        request_time=trace.start_ns // 1_000_000,
        execution_duration=max(0, round((trace.end - trace.start) * 1000)),
        state=TraceState.ERROR if trace.status >= 500 else TraceState.OK,  # as its root span
        trace_metadata={TraceMetadataKey.MODEL_ID: trace.logged_model},
        tags={**trace.tags, TraceTagKey.TRACE_NAME: trace.name},
    )
