"""A served request's trace: built as the request passes the gate, handed to the exporter
when it ends (trace_export.py), in MLflow's and OpenTelemetry's terms.

The request path only takes times (``perf_counter``) and sets a few attributes; spans are
made from them, and turned into wall-clock nanoseconds and protobuf, in the exporter's
thread. A trace's id is chosen when the request starts, so it can be in the response's
headers before its first byte (``x-aiml-trace-id``, MLflow's form: ``tr-`` and the 32 hex
digits of the OpenTelemetry trace id, which is what MLflow names a trace ingested by OTLP).

Attributes follow OpenTelemetry's GenAI conventions (``gen_ai.*``) where they say something,
and aiml's own (``aiml.*``) for the registry's name, version and alias, the surface, the
arm of a canary, the caller's key name. The registry's names are also trace tags
(``mlflow.traceTag.*`` on the root span becomes one in MLflow), so MLflow's search finds a
version's traffic: ``tags.`aiml.model_version` = 'm/3'``.
"""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["TRACE_HEADER", "Content", "RequestTrace", "TraceSpan", "Tracer"]

#: The response header naming a request's trace (only when it is traced).
TRACE_HEADER = "x-aiml-trace-id"
AttributeValue = str | int | float | bool
Content = Literal["none", "truncated", "full"]


@dataclass(slots=True)
class TraceSpan:
    """A span within the request (perf_counter seconds)."""

    name: str
    start: float
    end: float
    parent: str | None = None  # a sibling span's name; None: the request's root
    attributes: dict[str, AttributeValue] = field(default_factory=dict)


class RequestTrace:
    """One request's trace, as far as it has come."""

    __slots__ = (
        "attributes", "end", "input", "logged_model", "name", "output", "span_id", "spans",
        "start", "start_ns", "status", "tags", "trace_id",
    )  # fmt: skip

    def __init__(self, name: str) -> None:
        self.trace_id = secrets.token_bytes(16)
        self.span_id = secrets.token_bytes(8)
        self.name = name
        self.start = time.perf_counter()
        self.start_ns = time.time_ns()  # the wall clock once; spans are offsets from here
        self.end = self.start
        self.status = 0
        self.attributes: dict[str, AttributeValue] = {}
        self.tags: dict[str, str] = {}
        self.spans: list[TraceSpan] = []
        self.input: Any = None  # JSON-able; None: not kept
        self.output: str | None = None
        #: The served version's MLflow 3 logged model, where it has one (trace_links.py).
        self.logged_model: str | None = None

    @property
    def mlflow_id(self) -> str:
        """The trace's id as MLflow names it."""
        return "tr-" + self.trace_id.hex()

    def add(self, span: TraceSpan) -> None:
        self.spans.append(span)

    def to_ns(self, at: float) -> int:
        """A perf_counter time as Unix nanoseconds."""
        return self.start_ns + int((at - self.start) * 1e9)


class Tracer:
    """Which requests are traced, what of their content is kept, where finished ones go."""

    def __init__(
        self,
        share: float,
        submit: Callable[[RequestTrace], None],
        *,
        content: Content = "truncated",
        chars: int = 2000,
    ) -> None:
        self.share = share
        self.submit = submit
        self.content = content
        self.chars = chars

    def start(self, name: str) -> RequestTrace | None:
        """A trace for a request starting now, if it falls in the sample."""
        if self.share <= 0 or (self.share < 1 and random.random() >= self.share):
            return None
        return RequestTrace(name)

    def keep(self, text: str) -> str | None:
        """What the trace keeps of an input or output."""
        if self.content == "none":
            return None
        if self.content == "truncated" and len(text) > self.chars:
            return text[: self.chars] + "…"
        return text
