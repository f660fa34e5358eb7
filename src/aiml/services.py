"""The composition root: everything the service needs, built once and passed in.

Both the HTTP app's lifespan and the CLI build their objects here; nothing is a module-level
singleton, so tests can build as many independent services as they like.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from aiml.engines.base import Engine
from aiml.engines.ollama import OllamaEngine
from aiml.inference.catalog import ModelCatalog
from aiml.inference.manager import InferenceManager
from aiml.inference.router import TaskRouter
from aiml.inference.stats import Stats
from aiml.registry.mlflow import MlflowRegistry
from aiml.settings import Settings

__all__ = ["Services", "build_engines", "build_services"]


@dataclass
class Services:
    settings: Settings
    registry: MlflowRegistry
    engines: Mapping[str, Engine]
    router: TaskRouter
    manager: InferenceManager
    catalog: ModelCatalog
    stats: Stats

    async def aclose(self) -> None:
        for engine in self.engines.values():
            await engine.aclose()


def build_engines(settings: Settings) -> dict[str, Engine]:
    """One instance per engine for the whole process."""
    return {
        OllamaEngine.name: OllamaEngine(
            settings.ollama_host,
            timeout_s=settings.ollama_timeout_s,
            connect_timeout_s=settings.ollama_connect_timeout_s,
            allow_pull=settings.ollama_allow_pull,
        )
    }


def build_services(
    settings: Settings,
    *,
    registry: MlflowRegistry | None = None,
    engines: Mapping[str, Engine] | None = None,
) -> Services:
    registry = registry or MlflowRegistry.from_settings(settings)
    engines = engines if engines is not None else build_engines(settings)
    stats = Stats()
    router = TaskRouter(engines, registry, ttl_s=settings.resolve_ttl_s, stats=stats)
    return Services(
        settings=settings,
        registry=registry,
        engines=engines,
        router=router,
        manager=InferenceManager(router, registry, stats),
        catalog=ModelCatalog(registry, router),
        stats=stats,
    )
