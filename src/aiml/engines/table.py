"""The engine table: every engine aiml can run, in one place.

Each :class:`EngineSpec` says how to build the engine from the settings (and which settings
it reads), which packages it needs, which registry tags name a model for it (a version with
``ollama_model_name`` and no ``inference_engine`` tag is an Ollama model), which
registered-file formats it serves, and its tasks. :func:`build_engines`, the resolver
and the catalog read this table; none of them names engines one by one.

Factories import their engine's module when called, so reading the table costs no import of
``openai``, llama.cpp or torch.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiml.settings import Settings
from aiml.types import LANGUAGE_SERVER_TASKS, Task

from .base import Engine
from .cores import thread_budget

if TYPE_CHECKING:
    from aiml.registry.artifacts import ArtifactCache

    from .pool import ModelPool

__all__ = [
    "ENGINES",
    "EngineDeps",
    "EngineSpec",
    "build_engines",
    "engine_for_format",
    "engine_for_name_tags",
    "local_engine_names",
]

log = logging.getLogger("aiml")


@dataclass(frozen=True, slots=True)
class EngineDeps:
    """What the composition root shares with engines besides settings."""

    artifacts: ArtifactCache
    pool: ModelPool


def _configured(settings: Settings) -> str | None:
    return None


@dataclass(frozen=True, slots=True)
class EngineSpec:
    name: str
    tasks: frozenset[Task]
    build: Callable[[Settings, EngineDeps], Engine]
    #: The settings fields ``build`` reads.
    settings: tuple[str, ...] = ()
    #: Version tags naming this engine's model (they pick the engine when no
    #: ``inference_engine`` tag does).
    name_tags: tuple[str, ...] = ()
    #: Formats of registered files this engine serves (``gguf``, ``hf``).
    formats: tuple[str, ...] = ()
    #: Importable modules the engine needs (the ``[local]`` extra).
    requires: tuple[str, ...] = ()
    #: Why the settings do not allow this engine to run, or ``None`` when they do.
    unconfigured: Callable[[Settings], str | None] = _configured

    @property
    def runs_models(self) -> bool:
        """It loads model files itself (so, in cluster mode, it runs on model replicas)."""
        return bool(self.formats)


def _ollama(settings: Settings, deps: EngineDeps) -> Engine:
    from .remote.hosts import on_hosts
    from .remote.ollama import OllamaEngine

    servers: list[Engine] = [
        OllamaEngine(
            host.strip(),
            timeout_s=settings.ollama_timeout_s,
            connect_timeout_s=settings.ollama_connect_timeout_s,
            allow_pull=settings.ollama_allow_pull,
        )
        for host in settings.ollama_host.split(",")
        if host.strip()
    ]
    return servers[0] if len(servers) == 1 else on_hosts(servers)


def _openai(settings: Settings, deps: EngineDeps) -> Engine:
    from .remote.openai import OpenAIEngine

    assert settings.openai_base_url is not None  # see _openai_unconfigured
    return OpenAIEngine(
        settings.openai_base_url,
        api_key=settings.openai_api_key,
        timeout_s=settings.openai_timeout_s,
        connect_timeout_s=settings.ollama_connect_timeout_s,
    )


def _openai_unconfigured(settings: Settings) -> str | None:
    return None if settings.openai_base_url else "engine 'openai' needs AIML_OPENAI_BASE_URL"


def _llamacpp(settings: Settings, deps: EngineDeps) -> Engine:
    from .llamacpp.engine import LlamaCppEngine

    return LlamaCppEngine(
        deps.artifacts,
        deps.pool,
        n_ctx=settings.llamacpp_n_ctx,
        n_threads=settings.llamacpp_threads or thread_budget(settings.engine_names)["llamacpp"],
        parallel=settings.llamacpp_parallel,
        n_batch=settings.llamacpp_batch,
        default_max_tokens=settings.default_max_tokens,
    )


def _transformers(settings: Settings, deps: EngineDeps) -> Engine:
    from .transformers.engine import TransformersEngine

    return TransformersEngine(
        deps.artifacts,
        deps.pool,
        embed_max_batch=settings.embed_max_batch,
        embed_max_wait_ms=settings.embed_max_wait_ms,
        default_max_tokens=settings.default_max_tokens,
        threads=settings.torch_threads or thread_budget(settings.engine_names)["transformers"],
    )


def _whisper(settings: Settings, deps: EngineDeps) -> Engine:
    from .media.whisper import WhisperEngine

    return WhisperEngine(
        deps.artifacts,
        deps.pool,
        threads=settings.whisper_threads or thread_budget(settings.engine_names)["whisper"],
        beam_size=settings.whisper_beam_size,
        max_audio_s=settings.max_audio_s,
    )


def _onnx(settings: Settings, deps: EngineDeps) -> Engine:
    from .media.onnx import OnnxEngine

    return OnnxEngine(
        deps.artifacts,
        deps.pool,
        threads=settings.onnx_threads or thread_budget(settings.engine_names)["onnx"],
        max_audio_s=settings.max_audio_s,
        max_image_pixels=settings.max_image_pixels,
        max_pages=settings.max_document_pages,
        dpi=settings.document_dpi,
    )


_SPECS = (
    EngineSpec(
        name="ollama",
        tasks=LANGUAGE_SERVER_TASKS,
        build=_ollama,
        settings=(
            "ollama_host",
            "ollama_timeout_s",
            "ollama_connect_timeout_s",
            "ollama_allow_pull",
        ),
        name_tags=("ollama_model_name",),
    ),
    EngineSpec(
        name="openai",
        tasks=LANGUAGE_SERVER_TASKS,
        build=_openai,
        settings=(
            "openai_base_url",
            "openai_api_key",
            "openai_timeout_s",
            "ollama_connect_timeout_s",
        ),
        name_tags=("openai_model_name",),
        unconfigured=_openai_unconfigured,
    ),
    EngineSpec(
        name="llamacpp",
        tasks=frozenset({Task.TEXT_GENERATION, Task.CHAT, Task.EMBEDDINGS}),
        build=_llamacpp,
        settings=(
            "llamacpp_n_ctx",
            "llamacpp_parallel",
            "llamacpp_batch",
            "llamacpp_threads",
            "default_max_tokens",
        ),
        name_tags=("gguf_file",),
        formats=("gguf",),
        requires=("llama_cpp",),
    ),
    EngineSpec(
        name="transformers",
        tasks=frozenset(
            {Task.TEXT_GENERATION, Task.CHAT, Task.EMBEDDINGS, Task.TEXT_CLASSIFICATION}
        ),
        build=_transformers,
        settings=("embed_max_batch", "embed_max_wait_ms", "default_max_tokens", "torch_threads"),
        formats=("hf",),
        requires=("transformers", "torch"),
    ),
    EngineSpec(
        name="whisper",
        tasks=frozenset({Task.ASR}),
        build=_whisper,
        settings=("whisper_threads", "whisper_beam_size", "max_audio_s"),
        formats=("ct2",),
        requires=("faster_whisper",),
    ),
    EngineSpec(
        name="onnx",
        tasks=frozenset({Task.VAD, Task.OCR, Task.DOCUMENT_ANALYSIS}),
        build=_onnx,
        settings=(
            "onnx_threads",
            "max_audio_s",
            "max_image_pixels",
            "max_document_pages",
            "document_dpi",
        ),
        name_tags=("onnx_file",),
        formats=("onnx",),
        requires=("onnxruntime", "av"),
    ),
)

#: Every engine aiml knows, by name; ``AIML_ENGINES`` picks which of them run.
ENGINES: Mapping[str, EngineSpec] = {spec.name: spec for spec in _SPECS}


def engine_for_name_tags(table: Mapping[str, EngineSpec] = ENGINES) -> dict[str, str]:
    """Name tag -> engine, in table order (the first engine whose tag a version has wins)."""
    return {tag: spec.name for spec in table.values() for tag in spec.name_tags}


def engine_for_format(fmt: str, table: Mapping[str, EngineSpec] = ENGINES) -> str | None:
    """The engine that serves registered files of format ``fmt``."""
    return next((spec.name for spec in table.values() if fmt in spec.formats), None)


def local_engine_names(settings: Settings, table: Mapping[str, EngineSpec] = ENGINES) -> list[str]:
    """The engines ``AIML_ENGINES`` names that load model files (model replicas run these)."""
    return [n for n in settings.engine_names if n in table and table[n].runs_models]


def build_engines(
    settings: Settings,
    artifacts: ArtifactCache,
    pool: ModelPool,
    *,
    table: Mapping[str, EngineSpec] = ENGINES,
    wrap_local: Callable[[Engine], Engine] | None = None,
) -> tuple[dict[str, Engine], dict[str, str]]:
    """One instance per engine ``AIML_ENGINES`` names, built from the engine table, and why
    any of those is missing. ``wrap_local`` (cluster mode: run the models on the Ray Serve
    model replicas) wraps each engine that loads model files."""
    engines: dict[str, Engine] = {}
    unavailable: dict[str, str] = {}
    deps = EngineDeps(artifacts=artifacts, pool=pool)
    for name in settings.engine_names:
        spec = table.get(name)
        if spec is None:
            unavailable[name] = f"unknown engine {name!r} in AIML_ENGINES"
            continue
        missing = [m for m in spec.requires if not _importable(m)]
        if missing:
            unavailable[name] = (
                f"engine {name!r} needs {', '.join(missing)}: "
                "pip install 'ai-model-lifecycle[local]'"
            )
            continue
        reason = spec.unconfigured(settings)
        if reason is not None:
            unavailable[name] = reason
            continue
        engine = spec.build(settings, deps)
        if wrap_local is not None and spec.runs_models:
            engine = wrap_local(engine)
        engines[name] = engine
    for reason in unavailable.values():
        log.info("%s", reason)
    return engines, unavailable


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None
