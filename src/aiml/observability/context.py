"""Per-request values set by the HTTP layer and read deeper down (logs, deadlines)."""

from __future__ import annotations

from contextvars import ContextVar

__all__ = [
    "note_response_header",
    "request_affinity",
    "request_caller",
    "request_deadline",
    "request_id",
    "request_path",
    "request_started",
    "response_headers",
    "stick_to_user",
]

#: The id of the request being served, for log lines (``-`` outside a request).
request_id: ContextVar[str] = ContextVar("aiml_request_id", default="-")
#: Seconds the request may take, when it asked for less than the default (``None``: default).
request_deadline: ContextVar[float | None] = ContextVar("aiml_request_deadline", default=None)
#: When the request arrived (the event loop's clock): its deadline counts from here.
request_started: ContextVar[float | None] = ContextVar("aiml_request_started", default=None)
#: Who is asking, for choices that must stick to a caller (a canary's version): the OpenAI
#: ``user`` field, else an ``x-aiml-session`` header, else the API key's digest, else the
#: client's address (``None`` outside a request: each choice is drawn afresh).
request_affinity: ContextVar[str | None] = ContextVar("aiml_request_affinity", default=None)
#: The request's path, and the name of the key that sent it (never the key), for traces.
request_path: ContextVar[str | None] = ContextVar("aiml_request_path", default=None)
request_caller: ContextVar[str | None] = ContextVar("aiml_request_caller", default=None)
#: Headers deeper layers add to the response being prepared (which model replica served it).
response_headers: ContextVar[list[tuple[bytes, bytes]] | None] = ContextVar(
    "aiml_response_headers", default=None
)


def note_response_header(name: str, value: str) -> None:
    """Set a header of the current request's response, if it has not started yet; a later
    note of the same header replaces an earlier one (a request that asked a model replica
    twice names the one that answered last).

    The list is shared by reference, so a value noted in a task the request spawned (a
    context copy) still reaches the response.
    """
    headers = response_headers.get()
    if headers is not None:
        key = name.encode("latin-1")
        headers[:] = [(k, v) for k, v in headers if k != key]
        headers.append((key, value.encode("latin-1", "replace")))


def stick_to_user(user: str | None) -> None:
    """A request body's caller field (OpenAI's ``user``, the Responses API's
    ``safety_identifier``) names the caller a canary's choice sticks to, for this request
    (the middleware puts the session, key or address back after it)."""
    if user:
        request_affinity.set("user:" + user)
