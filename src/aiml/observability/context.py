"""Per-request values set by the HTTP layer and read deeper down (logs, deadlines)."""

from __future__ import annotations

from contextvars import ContextVar

__all__ = ["request_deadline", "request_id", "request_started"]

#: The id of the request being served, for log lines (``-`` outside a request).
request_id: ContextVar[str] = ContextVar("aiml_request_id", default="-")
#: Seconds the request may take, when it asked for less than the default (``None``: default).
request_deadline: ContextVar[float | None] = ContextVar("aiml_request_deadline", default=None)
#: When the request arrived (the event loop's clock): its deadline counts from here.
request_started: ContextVar[float | None] = ContextVar("aiml_request_started", default=None)
