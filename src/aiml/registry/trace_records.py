"""A registry version's recent traces, read back from aiml's trace experiment in MLflow,
with the feedback given on them and a link to each in MLflow's UI.

The version is a trace tag (``aiml.model_version``, inference/request_traces.py), so
MLflow's own search finds its traffic, newest first. Who made a trace is the caller's key
name as OpenTelemetry's ``user.id``, which MLflow keeps as the trace's metadata
``mlflow.trace.user``: an exact match in the same search (traces from before aiml set it
are found for admins only).

A trace's page in MLflow's UI is the experiment's traces tab with the trace selected:
``<server>/#/experiments/<id>/traces?selectedEvaluationId=<trace>&traceId=<trace>`` (the
tab has read the first parameter since MLflow 3.0; the second is for later ones).

The reads have their own small thread pool, so a slow MLflow never holds up the registry
calls that serve requests, and each is waited for at most the registry timeout, the first
one too (registry/calls.py waits for a first call without a bound, for a sqlite store's
schema; here the store is always a server): a stalled read is left to finish in its
thread, at most ``threads`` of them.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import urlencode

from mlflow import MlflowClient
from mlflow.entities import Feedback, Trace
from mlflow.exceptions import MlflowException

from aiml.errors import RegistryError, RegistryUnavailable
from aiml.urls import redact

from .calls import short

__all__ = ["TraceRecords", "record", "ui_url"]

_TAGS = {"model_version": "aiml.model_version", "alias": "aiml.alias", "arm": "aiml.arm"}
_ROOT_ATTRIBUTES = {
    "key_name": "aiml.key_name",
    "surface": "aiml.surface",
    "status_code": "http.response.status_code",
    "input_tokens": "gen_ai.usage.input_tokens",
    "output_tokens": "gen_ai.usage.output_tokens",
}
#: MLflow's answers that refuse the search itself (not the server being away).
_REFUSED = {"INVALID_PARAMETER_VALUE", "BAD_REQUEST"}
T = TypeVar("T")


def ui_url(server: str, experiment_id: str, trace_id: str | None = None) -> str:
    """The experiment's traces tab in MLflow's UI, on ``trace_id`` if given."""
    page = f"{redact(server).rstrip('/')}/#/experiments/{experiment_id}/traces"
    if trace_id is None:
        return page
    return f"{page}?{urlencode({'selectedEvaluationId': trace_id, 'traceId': trace_id})}"


class TraceRecords:
    """Reads aiml's traces from the MLflow server at ``tracking_uri``; the experiment
    ``experiment`` is looked up until it exists (the first exported trace creates it),
    then kept."""

    def __init__(
        self, tracking_uri: str, experiment: str, *, timeout_s: float, threads: int = 2
    ) -> None:
        self._uri = tracking_uri
        self._client = MlflowClient(tracking_uri=tracking_uri)
        self._timeout_s = timeout_s
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="aiml-traces")
        self._experiment = experiment
        self._id: str | None = None
        self._lock = threading.Lock()

    async def recent(
        self, model_version: str, *, max_results: int, key_name: str | None
    ) -> tuple[str | None, list[dict[str, Any]]]:
        """The experiment's id (``None`` while no trace has created it) and the newest
        ``max_results`` traces of ``model_version`` (``name/3``), each as the API shows it;
        only those ``key_name`` made, if given. ``model_version`` goes into MLflow's filter
        as it is: the caller has checked that it holds no quote."""
        return await self._run(self._recent, model_version, max_results, key_name)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        where = redact(self._uri)
        future = asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        try:
            async with asyncio.timeout(self._timeout_s):
                return await future
        except TimeoutError:
            raise RegistryUnavailable(
                f"MLflow at {where} did not answer about traces within {self._timeout_s:g} s"
            ) from None
        except MlflowException as exc:
            if exc.error_code in _REFUSED:
                raise RegistryError(f"MLflow refused the traces search: {short(exc)}") from exc
            raise RegistryUnavailable(f"MLflow at {where} is unavailable: {short(exc)}") from exc

    def experiment_url(self, experiment_id: str | None) -> str | None:
        """The experiment's traces tab in MLflow's UI (``None`` for no experiment)."""
        return ui_url(self._uri, experiment_id) if experiment_id is not None else None

    def _experiment_id(self) -> str | None:
        with self._lock:
            if self._id is None:
                found = self._client.get_experiment_by_name(self._experiment)
                self._id = found.experiment_id if found is not None else None
            return self._id

    def _recent(
        self, model_version: str, max_results: int, key_name: str | None
    ) -> tuple[str | None, list[dict[str, Any]]]:
        experiment = self._experiment_id()
        if experiment is None:
            return None, []
        clauses = [f"tags.`aiml.model_version` = '{model_version}'"]
        if key_name is not None:  # "key-" and hex digits, or "anonymous": no quote
            # In the search, not after it: other callers' newer traces would use up
            # ``max_results``.
            clauses.append(f"metadata.`mlflow.trace.user` = '{key_name}'")
        found = self._client.search_traces(
            locations=[experiment],
            filter_string=" AND ".join(clauses),
            order_by=["timestamp_ms DESC"],
            max_results=max_results,
        )
        return experiment, [record(trace, self._uri, experiment) for trace in found]


def record(trace: Trace, server: str, experiment_id: str) -> dict[str, Any]:
    """One trace as ``GET /v1/traces`` shows it."""
    info = trace.info
    root = next((s for s in trace.data.spans if s.parent_id is None), None)
    attributes = root.attributes if root is not None else {}
    return {
        "trace_id": info.trace_id,
        "timestamp_ms": info.request_time,
        "state": str(getattr(info.state, "value", info.state)),
        "execution_ms": info.execution_duration,
        "name": info.tags.get("mlflow.traceName"),
        "request_preview": info.request_preview,
        "response_preview": info.response_preview,
        **{field: info.tags.get(tag) for field, tag in _TAGS.items()},
        **{field: attributes.get(key) for field, key in _ROOT_ATTRIBUTES.items()},
        "feedback": [
            {
                "assessment_id": a.assessment_id,
                "name": a.name,
                "value": a.value,
                "rationale": a.rationale,
                "source_type": a.source.source_type if a.source is not None else None,
                "source_id": a.source.source_id if a.source is not None else None,
                "timestamp_ms": a.create_time_ms,
            }
            for a in info.assessments
            if isinstance(a, Feedback) and a.valid is not False  # an overridden one is not
        ],
        "ui_url": ui_url(server, experiment_id, info.trace_id),
    }
