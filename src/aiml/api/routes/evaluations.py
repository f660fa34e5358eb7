"""``GET /v1/evaluations``: a registered model's evaluation runs (``aiml evaluate``), as
MLflow recorded them (registry/evaluation_records.py): candidate against baseline, each
side's metrics, the scores comparing them, and a link to each run in MLflow's UI.

Any key reads them (they hold aggregates, no request's content), as the console's rollouts
page does beside each canary. No run (or no evaluation experiment yet) is an empty list.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from aiml.registry.evaluation_records import EvaluationRecords, evaluation_records
from aiml.registry.references import validate_registry_name

from ..deps import ServicesDep
from ..responses import JSONResponse

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["evaluations"])

_VERSION = Query(ge=1, le=9_999_999_999)


async def _records(services: ServicesDep) -> EvaluationRecords:
    settings = services.settings
    return evaluation_records(settings.tracking_uri, settings.trace_experiment)


@router.get("/evaluations")
async def evaluations(
    records: Annotated[EvaluationRecords, Depends(_records)],
    model: Annotated[str, Query(max_length=256, description="The registered model's name")],
    candidate: Annotated[int | None, _VERSION] = None,
    baseline: Annotated[int | None, _VERSION] = None,
    max_results: Annotated[int, Query(ge=1, le=50)] = 10,
) -> JSONResponse:
    """The newest ``max_results`` evaluation runs of ``model`` (of version ``candidate``,
    against version ``baseline``, where given), newest first: the versions, when, status,
    ``recorded_inputs``, ``sides`` (each version's latency, tokens and failures),
    ``delta`` (candidate minus baseline), ``scores`` (exact match, JSON validity,
    similarity, a named scorer's: means over the inputs) and ``run_url``, the run in
    MLflow's UI (``null`` when the tracking URI is no server)."""
    validate_registry_name(model, param="model")  # it goes into MLflow's filter string
    experiment, found = await asyncio.to_thread(
        records.recent, model, candidate=candidate, baseline=baseline, max_results=max_results
    )
    return JSONResponse({"success": True, "model": model, "experiment_id": experiment,
                         "evaluations": found})  # fmt: skip
