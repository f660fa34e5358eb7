"""One place that turns exceptions into HTTP responses with a status that means something.

Each API surface keeps its own error body, so its clients understand it:

* aiml's routes: ``{"success": false, "error": {"code", "message", "param"?}}``
* ``/v1`` (OpenAI): ``{"error": {"message", "type", "param", "code"}}``, 400 for bad input
* ``/api`` (Ollama): ``{"error": "message"}``, 400 for bad input

An exception that is not an :class:`~aiml.errors.AimlError` is a bug in aiml: 500
``internal_error`` whose message carries the request id, the id its logged traceback has.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aiml.errors import AimlError
from aiml.observability.context import request_id

from .responses import JSONResponse, error_response

__all__ = ["install_error_handlers", "openai_error_body", "render_error"]

log = logging.getLogger("aiml.api")

_HTTP_CODES = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    501: "not_implemented",
}
# OpenAI's error types by status (its API reference); 5xx are "api_error".
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def openai_error_body(status: int, code: str, message: str, param: str | None) -> dict[str, Any]:
    kind = _OPENAI_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


Surface = Literal["openai", "ollama", "aiml"]


def surface_of(path: str) -> Surface:
    """Which API's error shape ``path`` answers in: OpenAI's on ``/v1``, Ollama's on
    ``/api``, aiml's own elsewhere (the OpenAPI schema documents the same)."""
    if path.startswith("/v1/"):
        return "openai"
    if path.startswith("/api/"):
        return "ollama"
    return "aiml"


def bad_input_status(surface: Surface) -> int:
    """OpenAI and Ollama report bad input as 400; aiml's own API as 422."""
    return 422 if surface == "aiml" else 400


def render_error(
    path: str,
    status: int,
    code: str,
    message: str,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """The error response in the shape the API surface of ``path`` uses."""
    # Messages and params can quote a client's own field names, which may hold lone
    # surrogates (JSON's "\\ud800"): escaped, so the error itself can always be encoded.
    message = message.encode("utf-8", "backslashreplace").decode()
    param = param.encode("utf-8", "backslashreplace").decode() if param is not None else None
    surface = surface_of(path)
    if status == 422:
        status = bad_input_status(surface)
    if surface == "openai":
        response: Response = JSONResponse(
            openai_error_body(status, code, message, param), status_code=status
        )
    elif surface == "ollama":
        response = JSONResponse({"error": message}, status_code=status)
    else:
        response = error_response(status, code, message, param=param)
    if headers:
        response.headers.update(headers)
    return response


async def _aiml_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AimlError)
    return render_error(
        request.url.path, exc.status_code, exc.code, exc.message, exc.param, headers=exc.headers
    )


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    if first.get("type") == "json_invalid":
        return render_error(
            request.url.path, 422, "invalid_request", "request body is not valid JSON"
        )
    # Drop the "body" prefix so the field reads as the client wrote it ("data.inputs").
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(location) or None
    message = str(first.get("msg", "invalid request"))
    if first.get("type") == "extra_forbidden":
        message = f"unknown field {param!r}"
    text = f"{param}: {message}" if param else message
    return render_error(request.url.path, 422, "invalid_request", text, param)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 400:
        # FastAPI's and Starlette's "could not parse the body" (a JSON body that is not
        # UTF-8, a broken multipart form): bad input, as a body that is not JSON is.
        message = f"the request body cannot be read: {exc.detail}"
        return render_error(request.url.path, 422, "invalid_request", message)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return render_error(
        request.url.path, exc.status_code, code, str(exc.detail), headers=dict(exc.headers or {})
    )


def _internal_error(path: str) -> Response:
    return render_error(
        path,
        500,
        "internal_error",
        f"internal error (request id {request_id.get()}); see the server log",
    )


async def _unexpected(request: Request, exc: Exception) -> Response:
    # Reached only for errors in the middleware outside _InternalErrors.
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return _internal_error(request.url.path)


class _InternalErrors:
    """A bug's 500, answered inside the request's context.

    Starlette hands a handler registered for ``Exception`` to its outermost middleware,
    which runs after the request context (the id, the access log) has been left: its 500
    would carry no request id. This sits inside that context instead.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if started:  # mid-stream: only closing the connection can tell the client
                raise
            await _internal_error(scope["path"])(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    """Call before adding any other middleware: the bug handler must be the innermost."""
    app.add_exception_handler(AimlError, _aiml_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    app.add_middleware(_InternalErrors)
