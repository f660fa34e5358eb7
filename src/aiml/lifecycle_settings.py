"""The settings of a model's life after its registration: canaries' guard, MLflow's
webhooks, traces of what each version serves. Part of :class:`~aiml.settings.Settings`
(its ``AIML_*`` variables), kept apart to keep each file about one thing."""

from __future__ import annotations

from pydantic import BaseModel, Field, PositiveFloat, PositiveInt

__all__ = ["LifecycleSettings"]


class LifecycleSettings(BaseModel):
    """Guard, webhooks and traces (read as ``AIML_<NAME>`` through Settings)."""

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
