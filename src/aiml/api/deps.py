"""Request-scoped access to the services the lifespan built."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from aiml.services import Services

from .schemas import ErrorResponse

__all__ = ["ERROR_RESPONSES", "ServicesDep"]


async def _services(request: Request) -> Services:
    # async: FastAPI would run a plain function in its threadpool, a thread hop per request
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(_services)]

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
