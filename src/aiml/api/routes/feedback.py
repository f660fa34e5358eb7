"""``POST /v1/feedback``: a caller's feedback on a served request, by its trace id (the
``x-aiml-trace-id`` header of the response), recorded in MLflow as the key's."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from aiml.errors import NotFound

from ..deps import CallerDep, ServicesDep
from ..responses import JSONResponse
from ..schemas import FeedbackBody
from ..threaded_json import ThreadedJsonRoute

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["feedback"], route_class=ThreadedJsonRoute)


@router.post("/feedback")
async def feedback(body: FeedbackBody, services: ServicesDep, caller: CallerDep) -> JSONResponse:
    """Record ``value`` (thumbs up ``true`` / down ``false``, a score, a label) and an
    optional ``comment`` on the trace ``trace_id``, as MLflow feedback whose source is the
    caller's key name; 404 when the trace is not in MLflow (tracing off, not sampled)."""
    if services.feedback is None:
        raise NotFound(
            "tracing is off here (AIML_TRACE_SAMPLE, an MLflow server)", param="trace_id"
        )
    source = caller.name or "anonymous"
    assessment = await asyncio.to_thread(
        services.feedback.record,
        body.trace_id,
        name=body.name,
        value=body.value,
        comment=body.comment,
        source=source,
    )
    return JSONResponse(
        {"success": True, "trace_id": body.trace_id, "assessment_id": assessment, "source": source}
    )
