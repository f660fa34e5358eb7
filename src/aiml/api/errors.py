"""One place that turns exceptions into HTTP responses with a status that means something."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from aiml.errors import AimlError

from .responses import error_response

__all__ = ["install_error_handlers"]

log = logging.getLogger("aiml.api")

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
}


async def _aiml_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AimlError)
    return error_response(exc.status_code, exc.code, exc.message, param=exc.param)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    # Drop the "body" prefix so the field reads as the client wrote it ("data.inputs").
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(location) or None
    message = str(first.get("msg", "invalid request"))
    if first.get("type") == "json_invalid":
        return error_response(422, "invalid_request", "request body is not valid JSON")
    if first.get("type") == "extra_forbidden":
        message = f"unknown field {param!r}"
    return error_response(
        422, "invalid_request", f"{param}: {message}" if param else message, param=param
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    response = error_response(exc.status_code, code, str(exc.detail))
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "internal error; see the server log")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AimlError, _aiml_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
