"""``ModelCatalog``: the model lifecycle routes' logic (register, list, aliases).

An alias is moved only to a version that can serve what it serves now (:mod:`.alias_moves`;
409 naming what the target lacks), unless forced. Changes made here invalidate the resolver
caches for the model, and the kept listing of every model (:mod:`.listing`), at once, so a
client that moves an alias through aiml sees the move on its next request and in its next
listing, not after the TTL.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread

from aiml.engines.base import Engine
from aiml.engines.remote.ollama import MODEL_NAME_TAG, OllamaEngine, is_valid_ollama_name
from aiml.engines.table import ENGINES, EngineSpec, engine_for_format
from aiml.errors import InvalidRequest, ModelNotFound
from aiml.registry.artifacts import CONTENT_TAG, Progress, build_manifest, tags_for
from aiml.registry.entities import RegisteredModelInfo
from aiml.registry.mlflow import MlflowRegistry
from aiml.registry.references import validate_alias, validate_registry_name
from aiml.types import ModelRef, RegistryVersion, Task

from .alias_holds import forced_tag
from .alias_moves import AliasMoves, Missing
from .capabilities import CapabilityBook
from .listing import ModelListing

__all__ = ["ModelCatalog", "Registration"]


@dataclass(frozen=True, slots=True)
class Registration:
    version: RegistryVersion
    alias: str | None
    #: False when the same content was registered before and that version is returned.
    created: bool = True
    #: Files left out (pickled weights are never registered).
    skipped: tuple[str, ...] = ()


class ModelCatalog:
    """Registry operations on behalf of the API and the CLI."""

    def __init__(
        self,
        registry: MlflowRegistry,
        engines: Mapping[str, Engine],
        *,
        on_change: Callable[[str], None] = lambda name: None,
        table: Mapping[str, EngineSpec] = ENGINES,
        listing_ttl_s: float = 30.0,
        capabilities: CapabilityBook | None = None,
        unavailable: Mapping[str, str] | None = None,
    ) -> None:
        """``on_change(name)`` runs after a model's versions or aliases change; ``table``
        says which engine serves which registered-file format; the listing of every model
        is fetched again after ``listing_ttl_s`` (the resolve TTL). ``capabilities`` is
        the book serving reads (so a move's check warms it), ``unavailable`` the configured
        engines that cannot run here and why."""
        self._registry = registry
        self._engines = engines
        self._on_change = on_change
        self._table = table
        self.listing = ModelListing(self._fetch_all, ttl_s=listing_ttl_s)
        self.moves = AliasMoves(engines, capabilities or CapabilityBook(), unavailable=unavailable)
        #: The model tags the engines read, fetched with every version lookup.
        self.tag_keys = tuple(sorted({k for e in engines.values() for k in e.model_tag_keys}))

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
        engine = self._engines.get(OllamaEngine.name)
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
        tags = {MODEL_NAME_TAG: found, "inference_engine": engine.name, "inference_task": task}
        version = await self._registry.create_pointer_version(
            registered_name,
            pointer={"engine": engine.name, MODEL_NAME_TAG: found, "task": task},
            tags=tags,
            description=description,
        )
        if alias is not None:
            await self._registry.set_alias(registered_name, alias, version.version)
        self.changed(registered_name)
        return Registration(version=version, alias=alias)

    async def register_files(
        self,
        source: Path,
        registered_name: str,
        *,
        engine: str | None = None,
        task: str | None = None,
        alias: str | None = None,
        description: str | None = None,
        force: bool = False,
        progress: Progress | None = None,
    ) -> Registration:
        """Log a GGUF file or a Hugging Face folder as a new version (or find it registered).

        The same content under the same name is found by its content hash and returned
        instead of making another version, unless ``force``.
        """
        validate_registry_name(registered_name)
        if alias is not None:
            validate_alias(alias)
        manifest, files, skipped = await anyio.to_thread.run_sync(
            build_manifest, source, progress or _quiet
        )
        expected = engine_for_format(manifest.format, self._table)
        if expected is None:
            raise InvalidRequest(f"no engine serves {manifest.format} files", param="engine")
        engine = engine or expected
        if engine != expected:
            raise InvalidRequest(
                f"a {manifest.format} model is served by {expected!r}, not {engine!r}",
                param="engine",
            )
        task = task or await anyio.to_thread.run_sync(_default_task, source, manifest.format)
        if task not in {t.value for t in Task}:
            raise InvalidRequest(f"unknown task {task!r}", param="task")
        existing = None
        if not force:
            existing = await self._registry.find_version_with_tag(
                registered_name, CONTENT_TAG, manifest.content_sha256
            )
        if existing is not None:
            version, created = existing, False
        else:
            extra = {"inference_engine": engine, "inference_task": task}
            file_tags = self._table[engine].name_tags
            if len(manifest.files) == 1 and file_tags:
                extra[file_tags[0]] = manifest.files[0].path  # the engine's tag naming its file
            version = await self._registry.create_files_version(
                registered_name,
                files=files,
                manifest_json=manifest.to_json(),
                tags=tags_for(manifest, extra),
                description=description,
                progress=progress,
            )
            created = True
        if alias is not None:
            await self._registry.set_alias(registered_name, alias, version.version)
        self.changed(registered_name)
        return Registration(version, alias, created=created, skipped=tuple(skipped))

    async def list_models(
        self, *, max_results: int = 100, page_token: str | None = None
    ) -> tuple[list[RegisteredModelInfo], str | None]:
        return await self._registry.list_models(max_results=max_results, page_token=page_token)

    async def all_models(self) -> list[RegisteredModelInfo]:
        """Every registered model (for the listings that cannot page), from the kept
        listing: no registry call while it is fresh, and served on through an outage."""
        return await self.listing()

    async def _fetch_all(self) -> list[RegisteredModelInfo]:
        """Every registered model, page after page, from the registry."""
        models: list[RegisteredModelInfo] = []
        token: str | None = None
        while True:
            page, token = await self.list_models(max_results=1000, page_token=token)
            models.extend(page)
            if not token:
                return models

    async def get_model(self, name: str) -> RegisteredModelInfo:
        validate_registry_name(name, param="name")
        return await self._registry.get_model(name)

    async def set_alias(self, name: str, alias: str, version: int, *, force: bool = False) -> None:
        """Point ``name@alias`` at ``version``, once the version is found able to serve what
        the alias serves (409 :class:`~aiml.errors.UnsafeAliasMove` otherwise); ``force``
        moves it unchecked."""
        validate_registry_name(name, param="name")
        validate_alias(alias)
        if not force:
            current, target = await self.alias_versions(name, alias, version)
            await self.moves.check(alias, current, target)
        else:  # so no front holds it off as a move it would refuse (alias_holds.py)
            await self._registry.set_version_tag(name, version, forced_tag(alias), "true")
        await self._registry.set_alias(name, alias, version)
        self.changed(name)

    async def alias_move_problems(self, name: str, alias: str, version: int) -> list[Missing]:
        """What ``version`` lacks to serve what ``name@alias`` serves now (empty: it can
        take over), read from the registry as it is now; nothing is moved."""
        current, target = await self.alias_versions(name, alias, version)
        return await self.moves.missing(current, target)

    async def alias_versions(
        self, name: str, alias: str, version: int
    ) -> tuple[RegistryVersion | None, RegistryVersion]:
        """The version the alias points at now (``None``: a new alias) and ``version``."""
        found = await self._registry.find_version(
            ModelRef(name, version=version), model_tag_keys=self.tag_keys
        )
        if found is None:  # pragma: no cover - a pinned lookup raises when absent
            raise ModelNotFound(f"registered model {name!r} has no version {version}")
        try:
            current = await self._registry.find_version(
                ModelRef(name, alias=alias), model_tag_keys=self.tag_keys
            )
        except ModelNotFound:
            current = None
        return current, found

    async def delete_alias(self, name: str, alias: str) -> None:
        validate_registry_name(name, param="name")
        validate_alias(alias)
        await self._registry.delete_alias(name, alias)
        self.changed(name)

    def changed(self, name: str) -> None:
        """After ``name``'s versions, aliases or tags changed: its caches go, here and on
        every front (``on_change``)."""
        self.listing.invalidate()
        self._on_change(name)


def _quiet(phase: str, done: int, total: int) -> None:
    return None


def _default_task(source: Path, fmt: str) -> str:
    """What a model folder is, from its own config; GGUF files default to text-generation."""
    if fmt == "gguf":
        return Task.TEXT_GENERATION.value
    if fmt == "ct2":  # CTranslate2 folders here are Whisper's
        return Task.ASR.value
    if fmt == "onnx":
        names = [p.name.lower() for p in ([source] if source.is_file() else source.glob("*.onnx"))]
        if any("det" in n for n in names) and any("rec" in n for n in names):
            return Task.OCR.value  # PP-OCR's detection and recognition models
        if any("vad" in n for n in names):
            return Task.VAD.value
        raise InvalidRequest(
            f"cannot tell the task of {source.name} from its files; pass one", param="task"
        )
    if (source / "modules.json").is_file():
        return Task.EMBEDDINGS.value
    config = json.loads((source / "config.json").read_text())
    architectures = [str(a) for a in config.get("architectures") or []]
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return Task.TEXT_CLASSIFICATION.value
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        return Task.TEXT_GENERATION.value
    raise InvalidRequest(
        f"cannot tell the task of {source.name} from its config; pass one", param="task"
    )
