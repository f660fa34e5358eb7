"""Wire formats: pydantic at the edge, compatible with the earlier system's clients."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from aiml.inference.tasks.base import CleanText

__all__ = [
    "AliasBody",
    "ErrorBody",
    "ErrorResponse",
    "InferRequest",
    "InferResponse",
    "RegisterOllamaRequest",
    "Resolved",
]


class InferRequest(CleanText):
    """``POST /inference/infer``. ``data`` and ``options`` are checked by the task."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field(max_length=64, examples=["text-generation"])
    engine: str = Field(max_length=64, examples=["ollama"])
    model_name: str = Field(max_length=512, examples=["llama2-7b-chat@production"])
    data: dict[str, Any]
    options: dict[str, Any] = Field(default_factory=dict)
    stream: bool = Field(default=False, description="Answer as NDJSON chunks.")


class Resolved(BaseModel):
    engine_model: str
    registry_name: str | None
    registry_version: int | None
    source: Literal["registry", "direct"]


class InferResponse(BaseModel):
    success: Literal[True]
    task: str
    engine: str
    model_name: str
    resolved: Resolved
    result: dict[str, Any]
    processing_time: float
    timestamp: str


class ErrorBody(BaseModel):
    code: str
    message: str
    param: str | None = None


class ErrorResponse(BaseModel):
    success: Literal[False]
    error: ErrorBody


class RegisterOllamaRequest(CleanText):
    model_config = ConfigDict(extra="forbid")

    local_model_name: str = Field(max_length=256, examples=["llama2:7b"])
    registered_name: str = Field(max_length=256, examples=["llama2-7b-chat"])
    task: str = Field(default="text-generation", max_length=64)
    alias: str | None = Field(default=None, max_length=255)
    description: str | None = Field(default=None, max_length=5000)


#: A registry version number as MLflow stores it (a 32-bit integer column in SQL stores).
MAX_VERSION = 2**31 - 1


class AliasBody(CleanText):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, le=MAX_VERSION)


class FeedbackBody(CleanText):
    """Feedback on a served request's trace: thumbs up/down, a score or a label."""

    model_config = ConfigDict(extra="forbid")

    trace_id: str = Field(pattern=r"^tr-[0-9a-f]{32}$")
    value: bool | float | str = Field(union_mode="left_to_right")
    name: str = Field(default="user_feedback", min_length=1, max_length=256)
    comment: str | None = Field(default=None, max_length=10_000)


class CanaryBody(CleanText):
    """A canary on an alias: ``weight`` percent of its callers to ``version``; or a staged
    one, stepping through ``plan``'s weights every ``dwell_s`` while the guard holds, then
    promoted."""

    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, le=MAX_VERSION)
    weight: float | None = Field(default=None, ge=0, le=100, allow_inf_nan=False)
    plan: list[float] | None = Field(default=None, min_length=1, max_length=20)
    dwell_s: float = Field(default=600.0, gt=0, le=30 * 86400, allow_inf_nan=False)
