"""The app factory: everything is built in the lifespan and reached through ``app.state``."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, FastAPI

from aiml import __version__
from aiml.observability.history import TrafficHistory
from aiml.services import Services, build_services
from aiml.settings import Settings
from aiml.teams.directory import KeyDirectory, environment_keys
from aiml.teams.service import Teams

from .audit_trail import AuditTrail
from .authentication import Authentication
from .disconnect import CancelOnDisconnect
from .errors import install_error_handlers
from .middleware import BodyLimit, RequestContext, Traffic
from .openapi import build_openapi
from .quotas import Quotas
from .responses import JSONResponse
from .routes import (
    admin,
    audio,
    console,
    evaluations,
    feedback,
    health,
    hooks,
    inference,
    keys,
    models,
    ollama,
    openai,
    responses,
    traces,
)

__all__ = ["create_app"]

log = logging.getLogger("aiml")


def create_app(
    settings: Settings | None = None,
    *,
    services_factory: Callable[[Settings], Services] = build_services,
) -> FastAPI:
    """Build the ASGI app. ``services_factory`` lets tests inject instrumented parts."""
    settings = settings or Settings()
    traffic = Traffic()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Building the MLflow client imports and configures a lot; keep it off the loop.
        services = await anyio.to_thread.run_sync(services_factory, settings)
        if settings.embedded_registry:
            await services.registry.ping()  # creates the sqlite schema before the first request
        app.state.services = services
        await services.teams.open()  # the keys, read before the first request
        services.start()
        # The console's traffic charts: the last 15 minutes of the counters, in memory.
        history = TrafficHistory(
            stats=services.stats,
            registry_calls=lambda: services.registry.calls,
            admission=services.manager.admission,
            pool=services.pool,
            latency=services.metrics.request_duration,
            ttft=services.metrics.time_to_first_token,
        )
        history.start()
        app.state.history = history
        await anyio.to_thread.run_sync(console.bundle)  # the console's files, read once
        # Everything built so far (MLflow, pydantic, FastAPI: hundreds of thousands of
        # objects) lives as long as the process: keep it out of the collector's scans, which
        # otherwise stall requests for tens of milliseconds on every full collection.
        gc.collect()
        gc.freeze()
        log.info(
            "aiml %s ready: registry %s, engines %s",
            __version__,
            services.registry.uri,
            ", ".join(f"{name} ({engine.location})" for name, engine in services.engines.items()),
        )
        if not services.teams.directory.enabled:
            log.warning("no API keys configured (AIML_API_KEYS, aiml keys): every route is open")
        try:
            yield
        finally:
            await history.aclose()
            await services.aclose()

    app = FastAPI(
        title="aiml",
        version=__version__,
        summary="Registry-resolved, cached inference over Ollama, llama.cpp, transformers "
        "and OpenAI-compatible servers.",
        lifespan=lifespan,
        default_response_class=JSONResponse,
    )
    app.state.traffic = traffic
    install_error_handlers(app)
    _add_routes(
        app,
        (
            inference.router,
            models.router,
            openai.router,
            audio.router,
            responses.router,
            ollama.router,
            admin.router,
            keys.router,
            health.router,
            health.metrics_router,
            console.router,
            hooks.router,
            feedback.router,
            traces.router,
            evaluations.router,
        ),
    )

    # Outermost last: the request id wraps everything, then the audit of admin actions
    # (refused ones too), the keys, their limits, then the body limit. Keys and limits come
    # before anything reads the body: a client without one never gets aiml to read (let
    # alone hold) a byte of it.
    # Innermost: a request whose client hung up is cancelled, streaming or not.
    # The keys are the lifespan's (the database's and the environment's); an app whose
    # lifespan has not run (a tool reading the schema, a test refusing bodies) knows only
    # the environment's, and counts nothing.
    environment = KeyDirectory(None, environment_keys(settings.api_keys, settings.admin_keys))

    def teams() -> Teams | None:
        services: Services | None = getattr(app.state, "services", None)
        return services.teams if services is not None else None

    def directory() -> KeyDirectory:
        found = teams()
        return found.directory if found is not None else environment

    app.add_middleware(CancelOnDisconnect)
    app.add_middleware(
        BodyLimit, max_bytes=settings.max_body_bytes, upload_bytes=settings.max_upload_bytes
    )
    app.add_middleware(Quotas, teams=teams)
    app.add_middleware(Authentication, directory=directory)
    app.add_middleware(AuditTrail, teams=teams)
    app.add_middleware(RequestContext, traffic=traffic, replica=settings.replica_name)
    _document(app, keyed=lambda: directory().enabled)
    return app


#: The routes nearly every request takes: matched first.
_HOT_PATHS = (
    "/inference/infer",
    "/v1/chat/completions",
    "/api/chat",
    "/api/generate",
    "/v1/completions",
    "/v1/embeddings",
    "/api/embed",
)


def _add_routes(app: FastAPI, routers: tuple[APIRouter, ...]) -> None:
    """The routers' routes, flat on the app's router, the hot ones first.

    ``include_router`` keeps each router as a nested branch that the app matches twice per
    request, route by route (measured: about 14% of a proxied request's CPU, in ~30 route
    matches). The routes carry their full paths and tags already; none of these routers
    has dependencies or settings of its own, so flat routes behave the same. Their paths
    are all distinct, so matching the hot ones first changes no request's route.
    """
    routes = [route for router in routers for route in router.routes]
    hot = [route for path in _HOT_PATHS for route in routes if getattr(route, "path", "") == path]
    app.router.routes[:0] = hot  # before FastAPI's own /docs and /openapi.json too
    app.router.routes.extend(route for route in routes if route not in hot)


def _document(app: FastAPI, *, keyed: Callable[[], bool]) -> None:
    """The OpenAPI schema with every answer each route can give and, where keys are
    configured, which key it needs (clients and fuzzers read it); built once, on first use."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app, keyed=keyed())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
