"""Liveness (no I/O) and readiness (registry and engines reachable)."""

from __future__ import annotations

from fastapi import APIRouter

from ..deps import ServicesDep
from ..responses import JSONResponse, error_response

__all__ = ["router"]

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
    }
    if report.ok:
        return JSONResponse({"status": "ready", **checks})
    return error_response(503, "not_ready", "a dependency is unreachable", extra=checks)
