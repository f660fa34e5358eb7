"""``/inference/*``: the earlier system's inference API."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter
from starlette.responses import Response

from aiml.errors import AimlError, EngineError
from aiml.inference.manager import InferenceRequest, StreamOutcome
from aiml.types import ResolvedModel

from ..deps import ServicesDep
from ..responses import JSONResponse, error_response
from ..schemas import InferRequest, InferResponse
from ..streaming import NDJSON, ndjson_line, streaming_response
from ..threaded_json import ThreadedJsonRoute

__all__ = ["router"]

router = APIRouter(prefix="/inference", tags=["inference"], route_class=ThreadedJsonRoute)


@router.post("/infer", response_model=InferResponse)
async def infer(body: InferRequest, services: ServicesDep) -> Response:
    """Resolve ``model_name`` (registry reference or engine name) and run ``task`` on it.

    With ``"stream": true`` the answer is NDJSON: ``{"done": false, "response": piece}``
    lines (``"message"`` for chat), then one ``{"done": true, ...}`` line holding the same
    object a non-streaming call returns (or ``"success": false`` and the error).
    """
    request = InferenceRequest(
        task=body.task,
        engine=body.engine,
        model_name=body.model_name,
        data=body.data,
        options=body.options,
    )
    if body.stream:
        stream = await services.manager.stream(request)
        return streaming_response(_ndjson(body, stream), NDJSON)
    outcome = await services.manager.infer(request)
    return JSONResponse(_envelope(body, outcome.resolved, outcome.result, outcome.processing_time))


def _envelope(
    body: InferRequest, resolved: ResolvedModel, result: dict[str, Any], elapsed: float
) -> dict[str, Any]:
    return {
        "success": True,
        "task": body.task,
        "engine": body.engine,
        "model_name": body.model_name,
        "resolved": resolved.describe(),
        "result": result,
        "processing_time": round(elapsed, 6),
        "timestamp": datetime.now(UTC).isoformat(),
    }


async def _ndjson(body: InferRequest, stream: StreamOutcome) -> AsyncIterator[bytes]:
    chat = body.task == "chat"
    try:
        async for chunk in stream.chunks():
            if chunk.text:
                piece: Any = {"role": "assistant", "content": chunk.text} if chat else chunk.text
                yield ndjson_line({"done": False, "message" if chat else "response": piece})
        if stream.final is None:
            raise EngineError("the engine ended the stream without a result")
        result = stream.shape(stream.final)
        yield ndjson_line(
            {"done": True, **_envelope(body, stream.resolved, result, stream.elapsed)}
        )
    except AimlError as exc:  # mid-stream: the status line is long gone, say it in the body
        yield ndjson_line({"done": True, "success": False, "error": exc.to_dict()})


@router.post("/clear-cache")
async def clear_cache(services: ServicesDep) -> JSONResponse:
    """Drop every executor and cached reference mapping; the next request resolves anew."""
    cleared = services.manager.clear_cache()
    return JSONResponse({"success": True, "cleared": cleared})


@router.get("/stats")
async def stats(services: ServicesDep) -> JSONResponse:
    """Requests, registry lookups, cache hits and misses, executors, loaded models, the
    capabilities of every model version read so far, each version's health, the
    shadow comparisons, the guard's trips and the staged canaries' steps."""
    models = {name: stats.as_dict() for name, stats in services.pool.model_stats().items()}
    known = {name: d.as_dict() for name, d in services.router.capabilities.known().items()}
    body = {
        **services.manager.stats(),
        "models": models,
        "capabilities": known,
        "shadow": services.manager.gate.shadow.report(),  # alias -> candidate comparisons
        "guard": services.guard.report(),  # candidates taken out, and why
        "rollout_steps": services.planner.report(),  # staged canaries' steps and promotions
        "traces": services.traces.report() if services.traces is not None else None,
        # Canaries declared in the registry whose candidate cannot serve: not split.
        "refused_canaries": services.router.resolver.candidates.report(),
    }
    return JSONResponse({"success": True, "stats": body})


@router.get("/supported-tasks")
async def supported_tasks(services: ServicesDep) -> JSONResponse:
    return JSONResponse({"success": True, "tasks": services.router.supported_tasks()})


@router.get("/loaded")
async def loaded(services: ServicesDep) -> JSONResponse:
    """Models the local engines hold in memory: size, last use, whether in use now; on a
    cluster, ``replicas``: which model replicas hold each ``name/version``."""
    pool = services.pool
    now = time.monotonic()
    models = [
        {
            "engine": entry.key[0],
            "registry_name": entry.key[1],
            "registry_version": entry.key[2],
            "size_bytes": entry.size_bytes,
            "loaded_s_ago": round(now - entry.loaded_at, 3),
            "last_used_s_ago": round(now - entry.last_used, 3),
            "in_use": entry.users,
        }
        for entry in pool.entries()
    ]
    budget = {
        "max_models": pool.max_models,
        "max_bytes": pool.max_bytes,
        "used_bytes": pool.used_bytes,
        "idle_ttl_s": pool.idle_ttl_s,
    }
    body: dict[str, Any] = {"success": True, "models": models, "budget": budget}
    if services.holders is not None:  # on a cluster the models are on the model replicas
        body["replicas"] = await services.holders()
    return JSONResponse(body)


@router.get("/health")
async def health(services: ServicesDep) -> JSONResponse:
    """Registry and engine reachability (503 when any is down)."""
    report = await services.manager.health()
    checks = {
        "registry": report.registry or "ok",
        "engines": {name: error or "ok" for name, error in report.engines.items()},
    }
    if report.ok:
        return JSONResponse({"success": True, "status": "healthy", **checks})
    return error_response(
        503, "unhealthy", "a dependency is unreachable", extra={"status": "degraded", **checks}
    )
