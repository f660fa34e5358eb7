"""The app factory: everything is built in the lifespan and reached through ``app.state``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI

from aiml import __version__
from aiml.services import Services, build_services
from aiml.settings import Settings

from .auth import KeyRing
from .errors import install_error_handlers
from .responses import JSONResponse
from .routes import admin, health, inference, models, ollama, openai

__all__ = ["create_app"]

log = logging.getLogger("aiml")


def create_app(
    settings: Settings | None = None,
    *,
    services_factory: Callable[[Settings], Services] = build_services,
) -> FastAPI:
    """Build the ASGI app. ``services_factory`` lets tests inject instrumented parts."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Building the MLflow client imports and configures a lot; keep it off the loop.
        services = await anyio.to_thread.run_sync(services_factory, settings)
        if settings.embedded_registry:
            await services.registry.ping()  # creates the sqlite schema before the first request
        app.state.services = services
        app.state.admin_keys = KeyRing.from_setting(settings.admin_keys)
        services.start()
        log.info(
            "aiml %s ready: registry %s, engines %s",
            __version__,
            services.registry.uri,
            ", ".join(f"{name} ({engine.location})" for name, engine in services.engines.items()),
        )
        try:
            yield
        finally:
            await services.aclose()

    app = FastAPI(
        title="aiml",
        version=__version__,
        summary="Registry-resolved, cached inference over Ollama and local engines.",
        lifespan=lifespan,
        default_response_class=JSONResponse,
    )
    install_error_handlers(app)
    app.include_router(inference.router)
    app.include_router(models.router)
    app.include_router(openai.router)
    app.include_router(ollama.router)
    app.include_router(admin.router)
    app.include_router(health.router)
    return app
