"""Where served requests' traces go: MLflow's OTLP endpoint, into aiml's experiment, and an
OpenTelemetry collector when one is configured (OpenTelemetry's own variables).

MLflow takes OTLP at ``<tracking server>/v1/traces`` (MLflow >= 3.4; the experiment in the
``x-mlflow-experiment-id`` header), so traces need the tracking URI to be an MLflow server;
with a database URI (the embedded sqlite default) there is no endpoint to post to, and
traces go to the collector only, or nowhere (said once at startup).
"""

from __future__ import annotations

import base64
import logging
import os
import threading
from collections.abc import Mapping

from mlflow import MlflowClient

from aiml.observability.trace_export import Destination, TraceExporter
from aiml.observability.tracing import Tracer
from aiml.settings import Settings

from .calls import apply_http_bounds
from .trace_links import TraceLinks

__all__ = ["build_tracer"]

log = logging.getLogger("aiml.traces")


def build_tracer(
    settings: Settings, tracking_uri: str, *, replica: str
) -> tuple[Tracer, TraceExporter] | None:
    """The tracer and its exporter, or ``None`` when nothing is traced."""
    if settings.trace_sample <= 0:
        return None
    destinations = []
    if tracking_uri.startswith(("http://", "https://")):
        # The links and the experiment's lookup are MLflow client calls in the exporter's
        # threads: bounded as the registry's are, or a server gone waits out minutes of
        # MLflow's retries in each.
        apply_http_bounds(settings)
        experiment = _Experiment(tracking_uri, settings.trace_experiment)
        links = TraceLinks(tracking_uri, experiment.experiment_id)
        url = tracking_uri.rstrip("/") + "/v1/traces"
        then = links if settings.trace_link_models else None
        destinations.append(Destination("mlflow", url, experiment.headers, then=then))
    collector = settings.otlp_traces_url
    if collector:
        headers = _otel_headers(settings.otel_exporter_otlp_headers)
        destinations.append(Destination("otlp", collector, lambda: headers))
    if not destinations:
        log.warning(
            "AIML_TRACE_SAMPLE is %s but traces have nowhere to go: MLFLOW_TRACKING_URI is "
            "not an MLflow server (%s) and OTEL_EXPORTER_OTLP_ENDPOINT is not set; no traces",
            settings.trace_sample, tracking_uri.split("://")[0],
        )  # fmt: skip
        return None
    resource = {"service.name": "aiml", "service.instance.id": replica}
    exporter = TraceExporter(
        destinations,
        resource=resource,
        capacity=settings.trace_queue,
        batch=settings.trace_batch,
        posters=settings.trace_posters,
    )
    tracer = Tracer(
        settings.trace_sample,
        exporter.submit,
        content=settings.trace_content,
        chars=settings.trace_content_chars,
    )
    return tracer, exporter


class _Experiment:
    """aiml's trace experiment on the server, found (or created) at the first export, in
    the exporter's thread; asked again after a failure."""

    def __init__(self, uri: str, name: str) -> None:
        self._uri = uri
        self._name = name
        self._id: str | None = None
        self._lock = threading.Lock()

    def experiment_id(self) -> str:
        with self._lock:
            if self._id is None:
                client = MlflowClient(tracking_uri=self._uri)
                found = client.get_experiment_by_name(self._name)
                self._id = found.experiment_id if found else client.create_experiment(self._name)
            return self._id

    def headers(self) -> Mapping[str, str]:
        return {"x-mlflow-experiment-id": self.experiment_id(), **_mlflow_auth()}


def _mlflow_auth() -> dict[str, str]:
    """MLflow's own client credentials, as its REST client sends them."""
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"authorization": f"Bearer {token}"}
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"authorization": f"Basic {basic}"}
    return {}


def _otel_headers(value: str) -> dict[str, str]:
    """``OTEL_EXPORTER_OTLP_HEADERS``: ``key=value`` pairs separated by commas."""
    pairs = (item.partition("=") for item in value.split(",") if "=" in item)
    return {key.strip().lower(): val.strip() for key, _, val in pairs}
