"""``/models/*``: registering Ollama models and managing registry aliases."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from aiml.errors import UnsafeAliasMove
from aiml.inference.canary import Canary
from aiml.registry.entities import RegisteredModelInfo
from aiml.types import RegistryVersion

from ..deps import ServicesDep
from ..responses import JSONResponse
from ..schemas import AliasBody, CanaryBody, RegisterOllamaRequest
from ..threaded_json import ThreadedJsonRoute

__all__ = ["router"]

router = APIRouter(prefix="/models", tags=["models"], route_class=ThreadedJsonRoute)


@router.post("/register_ollama", status_code=201)
async def register_ollama(body: RegisterOllamaRequest, services: ServicesDep) -> JSONResponse:
    """Check the model exists on the Ollama server and record it as a new registry version."""
    registration = await services.catalog.register_ollama(
        local_model_name=body.local_model_name,
        registered_name=body.registered_name,
        task=body.task,
        alias=body.alias,
        description=body.description,
    )
    version = registration.version
    return JSONResponse(
        {
            "success": True,
            "registered_name": version.name,
            "version": version.version,
            "ollama_model_name": version.tags.get("ollama_model_name"),
            "alias": registration.alias,
            "tags": dict(version.tags),
        },
        status_code=201,
    )


@router.get("/registered_in_mlflow")
async def list_registered(
    services: ServicesDep,
    max_results: Annotated[int, Query(ge=1, le=1000)] = 100,
    page_token: Annotated[str | None, Query(max_length=4096)] = None,
) -> JSONResponse:
    """One page of registered models with their tags and aliases."""
    models, token = await services.catalog.list_models(
        max_results=max_results, page_token=page_token
    )
    return JSONResponse(
        {"success": True, "models": [_model(m) for m in models], "next_page_token": token}
    )


@router.get("/registered_in_mlflow/{name}")
async def get_registered(name: str, services: ServicesDep) -> JSONResponse:
    """A registered model with every version, its tags and aliases."""
    info = await services.catalog.get_model(name)
    return JSONResponse(
        {"success": True, "model": _model(info), "versions": [_version(v) for v in info.versions]}
    )


@router.put("/registered_in_mlflow/{name}/aliases/{alias}")
async def set_alias(
    name: str,
    alias: str,
    body: AliasBody,
    services: ServicesDep,
    force: Annotated[bool, Query(description="Move without checking the version")] = False,
) -> JSONResponse:
    """Point ``alias`` at a version; cached resolutions of ``name`` are dropped at once.

    Unless ``force``, the version must serve what the alias serves now (its engine, tasks,
    files, capabilities): 409 ``unsafe_alias_move`` otherwise, ``error.missing`` listing
    each lack as ``{kind, name, reason}``.
    """
    try:
        await services.catalog.set_alias(name, alias, body.version, force=force)
    except UnsafeAliasMove as exc:
        return _unsafe(exc)
    return JSONResponse({"success": True, "name": name, "alias": alias, "version": body.version})


@router.get("/registered_in_mlflow/{name}/aliases/{alias}/canary")
async def get_canary(name: str, alias: str, services: ServicesDep) -> JSONResponse:
    """The alias's version and the canary it runs (``null``: none)."""
    version, canary = await services.rollouts.current(name, alias)
    return JSONResponse({"success": True, **_canary(name, alias, version, canary)})


@router.put("/registered_in_mlflow/{name}/aliases/{alias}/canary")
async def start_canary(
    name: str,
    alias: str,
    body: CanaryBody,
    services: ServicesDep,
    force: Annotated[bool, Query(description="Start it without checking the version")] = False,
) -> JSONResponse:
    """Send ``weight`` percent of the alias's callers (each keeps its version) to
    ``version``, or change the weight of the canary running; with ``plan`` (rising
    percents, e.g. ``[5, 25, 100]``), start at its first step and step up every
    ``dwell_s`` while the guard holds and the candidate has traffic, then promote it. The
    candidate must serve what the alias serves (409 ``unsafe_alias_move``, as a move,
    unless ``force``)."""
    try:
        canary = await services.rollouts.start(
            name,
            alias,
            body.version,
            body.weight,
            plan=body.plan,
            dwell_s=body.dwell_s,
            force=force,
        )
    except UnsafeAliasMove as exc:
        return _unsafe(exc)
    version, _ = await services.rollouts.current(name, alias)
    return JSONResponse({"success": True, **_canary(name, alias, version, canary)})


@router.delete("/registered_in_mlflow/{name}/aliases/{alias}/canary")
async def stop_canary(name: str, alias: str, services: ServicesDep) -> JSONResponse:
    """End the alias's canary: every caller on the alias's version again."""
    stopped = await services.rollouts.stop(name, alias)
    return JSONResponse({"success": True, "name": name, "alias": alias, "stopped": stopped})


@router.post("/registered_in_mlflow/{name}/aliases/{alias}/canary/promote")
async def promote_canary(
    name: str,
    alias: str,
    services: ServicesDep,
    force: Annotated[bool, Query(description="Move without checking the version")] = False,
) -> JSONResponse:
    """Move the alias to its canary's candidate (checked as any move) and end the canary."""
    try:
        version = await services.rollouts.promote(name, alias, force=force)
    except UnsafeAliasMove as exc:
        return _unsafe(exc)
    return JSONResponse({"success": True, "name": name, "alias": alias, "version": version})


def _unsafe(exc: UnsafeAliasMove) -> JSONResponse:
    error = {**exc.to_dict(), "missing": exc.missing}
    return JSONResponse({"success": False, "error": error}, status_code=exc.status_code)


def _canary(name: str, alias: str, version: int, canary: Canary | None) -> dict[str, Any]:
    split: dict[str, Any] | None = None
    if canary is not None:
        split = {"version": canary.version, "weight": canary.weight, "plan": None}
        if canary.plan is not None:
            plan = canary.plan
            split["plan"] = {"steps": list(plan.steps), "dwell_s": plan.dwell_s,
                             "step_since": plan.since}  # fmt: skip
    return {"name": name, "alias": alias, "version": version, "canary": split}


@router.delete("/registered_in_mlflow/{name}/aliases/{alias}")
async def delete_alias(name: str, alias: str, services: ServicesDep) -> JSONResponse:
    await services.catalog.delete_alias(name, alias)
    return JSONResponse({"success": True, "name": name, "alias": alias})


def _model(info: RegisteredModelInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "description": info.description,
        "tags": dict(info.tags),
        "aliases": dict(info.aliases),
        "latest_version": info.latest_version,
    }


def _version(version: RegistryVersion) -> dict[str, Any]:
    return {
        "version": version.version,
        "tags": dict(version.tags),
        "aliases": list(version.aliases),
        "source": version.source,
    }
