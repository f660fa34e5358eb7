"""The composition root: everything the service needs, built once and passed in.

Both the HTTP app's lifespan and the CLI build their objects here; nothing is a module-level
singleton, so tests can build as many independent services as they like.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from aiml.engines.base import Engine
from aiml.engines.ollama import OllamaEngine
from aiml.engines.pool import ModelPool
from aiml.inference.admission import Admission
from aiml.inference.catalog import ModelCatalog
from aiml.inference.limits import Limits
from aiml.inference.manager import InferenceManager
from aiml.inference.router import TaskRouter
from aiml.inference.stats import Stats
from aiml.observability.metrics import Metrics
from aiml.registry.artifacts import ArtifactCache
from aiml.registry.mlflow import MlflowRegistry
from aiml.settings import Settings

__all__ = ["Services", "build_engines", "build_services"]

log = logging.getLogger("aiml")

#: Engines that run in this process and the packages they need.
_LOCAL_REQUIREMENTS = {"llamacpp": ("llama_cpp",), "transformers": ("transformers", "torch")}


@dataclass
class Services:
    settings: Settings
    registry: MlflowRegistry
    engines: Mapping[str, Engine]
    router: TaskRouter
    manager: InferenceManager
    catalog: ModelCatalog
    stats: Stats
    pool: ModelPool
    artifacts: ArtifactCache
    metrics: Metrics
    unavailable: Mapping[str, str] = field(default_factory=dict)

    def start(self) -> None:
        """Start background work (the idle-model reaper); needs a running event loop."""
        self.pool.start()

    async def aclose(self) -> None:
        await self.pool.aclose()
        for engine in self.engines.values():
            await engine.aclose()


def build_engines(
    settings: Settings, artifacts: ArtifactCache, pool: ModelPool
) -> tuple[dict[str, Engine], dict[str, str]]:
    """One instance per configured engine, and why any configured engine is missing."""
    engines: dict[str, Engine] = {}
    unavailable: dict[str, str] = {}
    for name in settings.engine_names:
        missing = [m for m in _LOCAL_REQUIREMENTS.get(name, ()) if not _importable(m)]
        if missing:
            unavailable[name] = (
                f"engine {name!r} needs {', '.join(missing)}: "
                "pip install 'ai-model-lifecycle[local]'"
            )
            continue
        if name == OllamaEngine.name:
            engines[name] = OllamaEngine(
                settings.ollama_host,
                timeout_s=settings.ollama_timeout_s,
                connect_timeout_s=settings.ollama_connect_timeout_s,
                allow_pull=settings.ollama_allow_pull,
                fast_transport=settings.ollama_fast_transport,
            )
        elif name == "openai":
            if not settings.openai_base_url:
                unavailable[name] = "engine 'openai' needs AIML_OPENAI_BASE_URL"
                continue
            from aiml.engines.openai import OpenAIEngine

            engines[name] = OpenAIEngine(
                settings.openai_base_url,
                api_key=settings.openai_api_key,
                timeout_s=settings.openai_timeout_s,
                connect_timeout_s=settings.ollama_connect_timeout_s,
            )
        elif name == "llamacpp":
            from aiml.engines.llamacpp import LlamaCppEngine

            engines[name] = LlamaCppEngine(
                artifacts,
                pool,
                n_ctx=settings.llamacpp_n_ctx,
                n_threads=settings.llamacpp_threads,
                default_max_tokens=settings.default_max_tokens,
            )
        elif name == "transformers":
            from aiml.engines.transformers import TransformersEngine

            engines[name] = TransformersEngine(
                artifacts,
                pool,
                embed_max_batch=settings.embed_max_batch,
                embed_max_wait_ms=settings.embed_max_wait_ms,
                default_max_tokens=settings.default_max_tokens,
            )
        else:
            unavailable[name] = f"unknown engine {name!r} in AIML_ENGINES"
    for reason in unavailable.values():
        log.info("%s", reason)
    return engines, unavailable


def build_services(
    settings: Settings,
    *,
    registry: MlflowRegistry | None = None,
    engines: Mapping[str, Engine] | None = None,
) -> Services:
    registry = registry or MlflowRegistry.from_settings(settings)
    metrics = Metrics()
    pool = ModelPool(
        max_models=settings.max_loaded_models,
        max_bytes=settings.max_model_memory_bytes,
        idle_ttl_s=settings.model_idle_ttl_s,
        wait_s=settings.model_load_wait_s,
        on_load=lambda engine, seconds: metrics.model_load_duration.labels(engine).observe(seconds),
    )
    artifacts = ArtifactCache(settings.model_cache_dir, registry)
    unavailable: dict[str, str] = {}
    if engines is None:
        engines, unavailable = build_engines(settings, artifacts, pool)
    stats = Stats()
    router = TaskRouter(
        engines, registry, ttl_s=settings.resolve_ttl_s, stats=stats, unavailable=unavailable
    )
    admission = {
        name: Admission(name, limit=settings.max_in_flight, queue=settings.max_queue)
        for name in engines
    }
    limits = Limits(
        max_prompt_chars=settings.max_prompt_chars,
        max_tokens=settings.max_tokens_limit,
        max_embed_inputs=settings.max_embed_inputs,
        max_image_bytes=settings.max_image_bytes,
    )
    metrics.watch(stats, lambda: registry.calls, admission, pool)
    manager = InferenceManager(
        router,
        registry,
        stats,
        limits=limits,
        admission=admission,
        metrics=metrics,
        request_timeout_s=settings.request_timeout_s,
    )
    return Services(
        settings=settings,
        registry=registry,
        engines=engines,
        router=router,
        manager=manager,
        catalog=ModelCatalog(registry, engines, on_change=router.invalidate_name),
        stats=stats,
        pool=pool,
        artifacts=artifacts,
        metrics=metrics,
        unavailable=unavailable,
    )


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None
