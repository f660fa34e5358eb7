"""Request-scoped access to the services the lifespan built."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from aiml.services import Services

from .auth import Caller, caller_of

__all__ = ["CallerDep", "ServicesDep"]


async def _services(request: Request) -> Services:
    # async: FastAPI would run a plain function in its threadpool, a thread hop per request
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(_services)]


async def _caller(request: Request) -> Caller:
    return caller_of(request.scope)


#: Who sent the request (its key's digest, admin or not), as the Authentication middleware found.
CallerDep = Annotated[Caller, Depends(_caller)]
