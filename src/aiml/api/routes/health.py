"""Liveness (no I/O) and readiness: ready while the front can serve what it served.

Every required engine (``AIML_REQUIRED_ENGINES``) must be up. The registry must answer, or
the front must hold models it resolved before, which its cache serves on through a registry
outage: a load balancer must not take a fleet out that can serve. An optional engine or
the registry that is down makes the body say ``degraded``, naming it, with a 200; a 503
only when it is draining, a required engine is down, or the registry is down and the front
has nothing it could serve without it."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from aiml.observability.metrics import CONTENT_TYPE

from ..deps import ServicesDep
from ..responses import JSONResponse, error_response

__all__ = ["metrics_router", "router"]

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live")
async def live() -> JSONResponse:
    return JSONResponse({"status": "alive"})


@router.get("/ready")
async def ready(services: ServicesDep) -> JSONResponse:
    report = await services.manager.health()
    checks = {
        "registry": report.registry or "ok",
        "engines": {name: error or "ok" for name, error in report.engines.items()},
        "required": sorted(report.required),
        "degraded": report.degraded,
    }
    if report.ready:
        return JSONResponse({"status": "degraded" if report.degraded else "ready", **checks})
    if report.draining:
        return error_response(503, "draining", "shutting down", extra={"draining": True, **checks})
    return error_response(503, "not_ready", "a dependency is unreachable", extra=checks)


metrics_router = APIRouter(tags=["health"])


@metrics_router.get("/metrics", response_class=Response)
async def metrics(services: ServicesDep) -> Response:
    """Prometheus metrics (aiml_requests_total, aiml_request_duration_seconds, ...)."""
    return Response(services.metrics.render(), media_type=CONTENT_TYPE)
