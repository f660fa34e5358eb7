"""Feedback on a served request's trace, recorded with MLflow's own assessments.

MLflow's ``log_feedback`` reads the process-wide tracking URI (and ``set_tracking_uri``
writes the environment), so aiml calls the client behind it, ``TracingClient``, with its own
URI. A trace is exported in batches (trace_export.py): feedback given right after its answer
waits (a few seconds at most) for the batch to reach MLflow first; if it has not yet, a
trace MLflow does not know is a 503 to retry, not a 404.
"""

from __future__ import annotations

import logging
from typing import Any

from mlflow.entities import AssessmentSource, Feedback
from mlflow.exceptions import MlflowException
from mlflow.tracing.client import TracingClient

from aiml.errors import NotFound, RegistryUnavailable
from aiml.observability.trace_export import TraceExporter

__all__ = ["TraceFeedback"]

log = logging.getLogger("aiml.traces")


class TraceFeedback:
    """Records feedback on aiml's traces (blocking: call it in a thread)."""

    def __init__(self, tracking_uri: str, exporter: TraceExporter, *, wait_s: float = 5.0) -> None:
        self._client = TracingClient(tracking_uri=tracking_uri)
        self._exporter = exporter
        self._wait_s = wait_s

    def record(
        self, trace_id: str, *, name: str, value: Any, comment: str | None, source: str
    ) -> str:
        """Feedback ``name`` = ``value`` on ``trace_id`` from ``source`` (a key's name);
        the assessment's id."""
        arrived = self._exporter.flush(timeout_s=self._wait_s)  # it may be in a batch on its way
        feedback = Feedback(
            name=name,
            value=value,
            rationale=comment,
            source=AssessmentSource(source_type="HUMAN", source_id=source),
        )
        try:
            logged = self._client.log_assessment(trace_id, feedback)
        except MlflowException as exc:
            missing = (
                exc.error_code == "RESOURCE_DOES_NOT_EXIST" or "not found" in exc.message.lower()
            )
            if missing and not arrived:  # a batch still on its way (a cold server: > 5 s)
                raise RegistryUnavailable(
                    f"trace {trace_id!r} is still on its way to MLflow: try again"
                ) from None
            if missing:
                raise NotFound(
                    f"no trace {trace_id!r} in MLflow (not sampled, dropped, or unknown)",
                    param="trace_id",
                ) from None
            raise RegistryUnavailable(f"MLflow did not take the feedback: {exc.message}") from exc
        return str(logged.assessment_id)
