"""Liveness (no I/O) and readiness: ready when the registry answers and every required
engine is up (``AIML_REQUIRED_ENGINES``); an optional engine that is down makes the body say
``degraded`` while the status stays 200."""

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
    if report.ok:
        return JSONResponse({"status": "degraded" if report.degraded else "ready", **checks})
    if report.draining:
        return error_response(503, "draining", "shutting down", extra={"draining": True, **checks})
    return error_response(503, "not_ready", "a dependency is unreachable", extra=checks)


metrics_router = APIRouter(tags=["health"])


@metrics_router.get("/metrics", response_class=Response)
async def metrics(services: ServicesDep) -> Response:
    """Prometheus metrics (aiml_requests_total, aiml_request_duration_seconds, ...)."""
    return Response(services.metrics.render(), media_type=CONTENT_TYPE)
