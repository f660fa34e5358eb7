"""MLflow's entities as aiml's: a model version as a :class:`~aiml.types.RegistryVersion`,
a registered model as a :class:`RegisteredModelInfo`."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from aiml.types import RegistryVersion

__all__ = ["RegisteredModelInfo", "model_info", "registry_version"]


@dataclass(frozen=True, slots=True)
class RegisteredModelInfo:
    """A registered model with its aliases, tags and (when asked for) its versions."""

    name: str
    description: str
    tags: Mapping[str, str]
    aliases: Mapping[str, int]
    latest_version: int | None
    versions: tuple[RegistryVersion, ...] = ()
    created_s: int = 0  # creation time, seconds since the epoch


def registry_version(
    mv: Any, model_tags: Mapping[str, str], aliases: Collection[str] | None = None
) -> RegistryVersion:
    return RegistryVersion(
        name=mv.name,
        version=int(mv.version),
        tags=dict(mv.tags or {}),
        model_tags=dict(model_tags),
        aliases=tuple(sorted(aliases if aliases is not None else (mv.aliases or ()))),
        source=mv.source,
        logged_model=logged_model_of(mv),
    )


def logged_model_of(mv: Any) -> str | None:
    """The MLflow 3 logged model a version was registered from: its ``model_id`` where the
    store reports one, else the id in a ``models:/<model id>`` source (the SQL store keeps
    the link only there)."""
    found = getattr(mv, "model_id", None)
    if found:
        return str(found)
    source = mv.source or ""
    if source.startswith("models:/m-") and "/" not in source[len("models:/") :]:
        return source[len("models:/") :]
    return None


def model_info(model: Any) -> RegisteredModelInfo:
    aliases = {alias: int(version) for alias, version in (model.aliases or {}).items()}
    latest = [int(v.version) for v in (model.latest_versions or [])]
    return RegisteredModelInfo(
        name=model.name,
        description=model.description or "",
        tags=dict(model.tags or {}),
        aliases=aliases,
        latest_version=max(latest) if latest else None,
        created_s=int(getattr(model, "creation_timestamp", 0) or 0) // 1000,
    )
