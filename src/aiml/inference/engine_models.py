"""What an engine makes of a reference: a registry version's model on its engine, or, for a
name the registry does not hold, the engine's own model of that name (the design note's
"way 2"); and which engine a registry version is for."""

from __future__ import annotations

from aiml.engines.base import Engine
from aiml.engines.table import engine_for_name_tags
from aiml.errors import ModelNotFound, ModelNotServable
from aiml.types import ModelRef, RegistryVersion, ResolvedModel, Source

__all__ = ["direct_model", "engine_of", "registry_model"]

# Tags that name an engine's model, for versions registered without an inference_engine tag.
_ENGINE_NAME_TAGS = engine_for_name_tags()


def engine_of(version: RegistryVersion) -> str | None:
    """The engine a registry version is for: its ``inference_engine`` tag, else its name tags."""
    declared = version.tag("inference_engine")
    if declared:
        return declared
    for tag, engine in _ENGINE_NAME_TAGS.items():
        if version.tag(tag):
            return engine
    return None


async def direct_model(ref: ModelRef, engine: Engine, registry_uri: str) -> ResolvedModel:
    """The note's "way 2": a name the registry does not know is the engine's own name."""
    found = await engine.find_model(ref.name)
    if found is None:
        where = (
            f"no registered model {ref.name!r} in the MLflow registry at {registry_uri}"
            if ref.registry_eligible
            else "names with ':' or '/' are engine names, so the registry was not consulted"
        )
        raise ModelNotFound(
            f"model {ref.name!r} not found: {where}, and {engine.location} does not have it",
            param="model_name",
        )
    return ResolvedModel(engine=engine.name, engine_model=found, source=Source.DIRECT)


async def registry_model(version: RegistryVersion, engine: Engine) -> ResolvedModel:
    declared = engine_of(version)
    if declared and declared != engine.name:
        raise ModelNotServable(
            f"registered model {version.name!r} version {version.version} is registered "
            f"for engine {declared!r}, not {engine.name!r}",
            param="engine",
        )
    engine_model = await engine.model_for_version(version)
    return ResolvedModel(
        engine=engine.name,
        engine_model=engine_model,
        source=Source.REGISTRY,
        registry_name=version.name,
        registry_version=version.version,
        declared_task=version.tag("inference_task"),
        tags=version.merged_tags(),
        logged_model=version.logged_model,
    )
