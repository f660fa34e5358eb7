"""``ModelCatalog``: the model lifecycle routes' logic (register, list, aliases).

Changes made here invalidate the resolver caches for the model at once, so a client that
moves an alias through aiml sees the move on its next request, not after the TTL.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiml.engines.ollama import OllamaEngine, is_valid_ollama_name
from aiml.errors import InvalidRequest, ModelNotFound
from aiml.registry.mlflow import MlflowRegistry, RegisteredModelInfo
from aiml.registry.references import validate_alias, validate_registry_name
from aiml.types import RegistryVersion, Task

from .router import TaskRouter

__all__ = ["ModelCatalog", "Registration"]


@dataclass(frozen=True, slots=True)
class Registration:
    version: RegistryVersion
    alias: str | None


class ModelCatalog:
    """Registry operations on behalf of the API and the CLI."""

    def __init__(self, registry: MlflowRegistry, router: TaskRouter) -> None:
        self._registry = registry
        self._router = router

    async def register_ollama(
        self,
        *,
        local_model_name: str,
        registered_name: str,
        task: str = Task.TEXT_GENERATION.value,
        alias: str | None = None,
        description: str | None = None,
    ) -> Registration:
        """Check the model is on the Ollama server, then record it as a new registry version."""
        engine = self._router.engines.get(OllamaEngine.name)
        if engine is None:
            raise InvalidRequest("the ollama engine is not configured", param="engine")
        if not is_valid_ollama_name(local_model_name):
            raise InvalidRequest(
                f"{local_model_name!r} is not an Ollama model name", param="local_model_name"
            )
        validate_registry_name(registered_name)
        if task not in {t.value for t in Task}:
            raise InvalidRequest(f"unknown task {task!r}", param="task")
        if alias is not None:
            validate_alias(alias)
        found = await engine.find_model(local_model_name)
        if found is None:
            raise ModelNotFound(
                f"{engine.location} does not have model {local_model_name!r}",
                param="local_model_name",
            )
        tags = {"ollama_model_name": found, "inference_engine": engine.name, "inference_task": task}
        version = await self._registry.create_pointer_version(
            registered_name,
            pointer={"engine": engine.name, "ollama_model_name": found, "task": task},
            tags=tags,
            description=description,
        )
        if alias is not None:
            await self._registry.set_alias(registered_name, alias, version.version)
        self._router.invalidate_name(registered_name)
        return Registration(version=version, alias=alias)

    async def list_models(
        self, *, max_results: int = 100, page_token: str | None = None
    ) -> tuple[list[RegisteredModelInfo], str | None]:
        return await self._registry.list_models(max_results=max_results, page_token=page_token)

    async def get_model(self, name: str) -> RegisteredModelInfo:
        validate_registry_name(name, param="name")
        return await self._registry.get_model(name)

    async def set_alias(self, name: str, alias: str, version: int) -> None:
        validate_registry_name(name, param="name")
        validate_alias(alias)
        await self._registry.set_alias(name, alias, version)
        self._router.invalidate_name(name)

    async def delete_alias(self, name: str, alias: str) -> None:
        validate_registry_name(name, param="name")
        validate_alias(alias)
        await self._registry.delete_alias(name, alias)
        self._router.invalidate_name(name)
