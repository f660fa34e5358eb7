"""Request-scoped access to the services the lifespan built."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from aiml.services import Services

from .auth import Caller, caller_of
from .schemas import ErrorResponse

__all__ = ["ERROR_RESPONSES", "CallerDep", "ServicesDep"]


async def _services(request: Request) -> Services:
    # async: FastAPI would run a plain function in its threadpool, a thread hop per request
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(_services)]


async def _caller(request: Request) -> Caller:
    return caller_of(request.scope)


#: Who sent the request (its key's digest, admin or not), as the Authentication middleware found.
CallerDep = Annotated[Caller, Depends(_caller)]

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        404: "Model not found in the registry or on the engine",
        422: "Malformed request; error.param names the field",
        502: "The registry or the engine answered with an error",
        503: "The registry or the engine is unreachable",
        504: "The engine did not answer in time",
    }.items()
}
