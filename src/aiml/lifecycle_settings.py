"""The settings of a model's life after its registration: canaries' guard, MLflow's
webhooks, traces of what each version serves. Part of :class:`~aiml.settings.Settings`
(its ``AIML_*`` variables), kept apart to keep each file about one thing."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, PositiveFloat, PositiveInt

__all__ = ["LifecycleSettings"]


class LifecycleSettings(BaseModel):
    """Guard, webhooks and traces (read as ``AIML_<NAME>`` through Settings, the
    OpenTelemetry exporter's as OTel names them)."""

    guard_window_s: PositiveFloat = Field(
        default=60.0,
        description="The canary guard compares a candidate with its alias's version over the "
        "last this many seconds.",
    )
    guard_min_requests: PositiveInt = Field(
        default=10, description="Requests a candidate serves in the window before a verdict."
    )
    guard_max_error_excess: float = Field(
        default=0.10,
        ge=0,
        le=1,
        description="A candidate whose 5xx ratio passes its stable version's by more is "
        "taken out (weight 0).",
    )
    guard_max_p99_ratio: float = Field(
        default=3.0,
        gt=1,
        description="A candidate whose p99 latency is more than this many times its stable "
        "version's (and 0.5 s more) is taken out.",
    )
    guard_check_s: PositiveFloat = Field(
        default=1.0, description="How often the canary guard looks (seconds)."
    )
    mlflow_webhook_secret: str = Field(
        default="",
        description="The secret MLflow signs its webhook deliveries with (HMAC-SHA256); "
        "with none, POST /hooks/mlflow is off (404).",
    )
    webhook_max_age_s: PositiveFloat = Field(
        default=300.0,
        description="A webhook delivery whose timestamp is further than this from now, either "
        "way, is refused (seconds); delivery ids are remembered as long, so none is replayed.",
    )
    trace_sample: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="The share of served requests recorded as MLflow traces (0: none, 1: "
        "all); traces need MLFLOW_TRACKING_URI to be an MLflow server, or an OTLP endpoint.",
    )
    trace_experiment: str = Field(
        default="aiml-traces",
        min_length=1,
        description="The MLflow experiment aiml's traces go to (created if missing).",
    )
    trace_content: Literal["none", "truncated", "full"] = Field(
        default="truncated",
        description="What a trace keeps of a request's input and output: nothing, the first "
        "AIML_TRACE_CONTENT_CHARS characters of each, or all.",
    )
    trace_content_chars: PositiveInt = Field(
        default=2000, description="How much of an input or output a truncated trace keeps."
    )
    trace_queue: PositiveInt = Field(
        default=10_000,
        description="Traces waiting for export at most; past that, new ones are dropped "
        "and counted (aiml_traces_dropped_total), never waited for.",
    )
    trace_batch: PositiveInt = Field(
        default=256,
        description="Traces per post to MLflow (and the collector): MLflow stores a post in "
        "one transaction, and its cost a trace falls with fuller posts.",
    )
    trace_link_models: bool = Field(
        default=True,
        description="Link each trace to its version's MLflow 3 logged model (one more MLflow "
        "call a trace: MLflow then takes a quarter to a third as many traces a second).",
    )
    trace_posters: int = Field(
        default=2,
        ge=1,
        le=16,
        description="Posts to MLflow in flight at once (threads), so the server's waits on its "
        "database overlap another post's work; more help where it has workers and cores to "
        "spare (a PostgreSQL backend, mlflow server --workers).",
    )
    otel_exporter_otlp_endpoint: str = Field(
        default="",
        validation_alias="OTEL_EXPORTER_OTLP_ENDPOINT",
        description="An OpenTelemetry collector the same spans go to (OTLP/HTTP protobuf, "
        "at this URL plus /v1/traces).",
    )
    otel_exporter_otlp_traces_endpoint: str = Field(
        default="",
        validation_alias="OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        description="The collector's traces URL as it is (over OTEL_EXPORTER_OTLP_ENDPOINT).",
    )
    otel_exporter_otlp_headers: str = Field(
        default="",
        validation_alias="OTEL_EXPORTER_OTLP_HEADERS",
        description="Headers for the collector, 'key=value,key2=value2' (OTel's form).",
    )

    @property
    def otlp_traces_url(self) -> str | None:
        """Where an OpenTelemetry collector takes spans, per OTel's two variables."""
        if self.otel_exporter_otlp_traces_endpoint:
            return self.otel_exporter_otlp_traces_endpoint
        if self.otel_exporter_otlp_endpoint:
            return self.otel_exporter_otlp_endpoint.rstrip("/") + "/v1/traces"
        return None
