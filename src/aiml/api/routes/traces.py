"""``GET /v1/traces``: a registry version's recent served requests, as MLflow recorded them
(registry/trace_records.py), with their feedback and a link to each in MLflow's UI.

A user key sees the traces its own requests made; an admin key (or anyone, with no keys
configured) sees every caller's. 404 when this aiml records no traces in MLflow
(``AIML_TRACE_SAMPLE`` is 0, or the tracking URI is not an MLflow server).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from aiml.errors import NotFound

from ..deps import CallerDep, ServicesDep
from ..responses import JSONResponse

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["feedback"])

#: ``name/version`` with a name aiml can serve (registry/references.py): no quote or
#: backslash, which would end the MLflow filter string it goes into.
_VERSION = r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*/[1-9][0-9]{0,9}$"


@router.get("/traces")
async def traces(
    services: ServicesDep,
    caller: CallerDep,
    model_version: Annotated[
        str, Query(pattern=_VERSION, max_length=512, description="The version: `name/3`")
    ],
    max_results: Annotated[int, Query(ge=1, le=100)] = 20,
) -> JSONResponse:
    """The newest ``max_results`` traces of ``model_version``, newest first: when, state,
    duration, previews of input and output, the version, alias and canary arm, the caller's
    key name, token counts, the feedback given on each (name, value, rationale, source),
    and ``ui_url``, the trace in MLflow's UI. Only the caller's own traces for a user key."""
    records = services.trace_records
    if records is None:
        raise NotFound(
            "tracing is off here (AIML_TRACE_SAMPLE, an MLflow server)", param="model_version"
        )
    # A key's name as the trace holds it (api/middleware.py); without a key and not an
    # admin, no trace is the caller's.
    own = None if caller.admin else caller.name or "anonymous"
    experiment, found = await records.recent(model_version, max_results=max_results, key_name=own)
    return JSONResponse({
        "success": True,
        "model_version": model_version,
        "scope": "all" if own is None else "own",
        "experiment_id": experiment,
        "experiment_url": records.experiment_url(experiment),
        "traces": found,
    })  # fmt: skip
