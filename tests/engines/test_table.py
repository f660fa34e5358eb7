"""The engine table drives which engines are built, which tags pick an engine and which
engine serves which registered files."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from aiml.engines.base import Engine
from aiml.engines.pool import ModelPool
from aiml.engines.table import ENGINES, EngineDeps, EngineSpec, build_engines, engine_for_format
from aiml.inference.engine_models import engine_of
from aiml.registry.artifacts import ArtifactCache
from aiml.settings import Settings
from aiml.types import (
    ChatMessage,
    Embeddings,
    Generation,
    GenerationChunk,
    RegistryVersion,
    ResolvedModel,
    SamplingParams,
    Task,
)


class EchoEngine(Engine):
    name = "echo"
    tasks = frozenset({Task.TEXT_GENERATION})

    def __init__(self, greeting: str) -> None:
        self.greeting = greeting

    @property
    def location(self) -> str:
        return "here"

    async def find_model(self, name: str) -> str | None:
        return name

    async def model_for_version(self, version: RegistryVersion) -> str:
        return version.name

    async def generate(
        self, model: ResolvedModel, prompt: str, params: SamplingParams, **kw: Any
    ) -> Generation:
        return Generation(text=f"{self.greeting} {prompt}")

    async def stream_generate(  # type: ignore[override]
        self, model: ResolvedModel, prompt: str, params: SamplingParams, **kw: Any
    ) -> AsyncIterator[GenerationChunk]:
        yield GenerationChunk(text=prompt, done=True)

    async def chat(
        self, model: ResolvedModel, messages: Sequence[ChatMessage], params: SamplingParams
    ) -> Generation:
        raise NotImplementedError

    async def stream_chat(  # type: ignore[override]
        self, model: ResolvedModel, messages: Sequence[ChatMessage], params: SamplingParams
    ) -> AsyncIterator[GenerationChunk]:
        raise NotImplementedError
        yield

    async def embed(self, model: ResolvedModel, inputs: Sequence[str]) -> Embeddings:
        raise NotImplementedError

    async def health(self) -> None:
        return None


def echo_spec(**overrides: Any) -> EngineSpec:
    values: dict[str, Any] = {
        "name": "echo",
        "tasks": EchoEngine.tasks,
        "build": lambda settings, deps: EchoEngine(f"hello from {settings.home.name}"),
        "settings": ("home",),
        "name_tags": ("echo_model_name",),
    }
    return EngineSpec(**(values | overrides))


@pytest.fixture
def deps(tmp_path: Path) -> tuple[ArtifactCache, ModelPool]:
    pool = ModelPool(max_models=1, max_bytes=1 << 30, idle_ttl_s=0, wait_s=1)
    return ArtifactCache(tmp_path / "models", registry=None), pool  # type: ignore[arg-type]


def settings(tmp_path: Path, engines: str) -> Settings:
    return Settings(home=tmp_path / "home", engines=engines)  # type: ignore[call-arg]


def test_a_spec_added_to_the_table_is_built(
    tmp_path: Path, deps: tuple[ArtifactCache, ModelPool]
) -> None:
    table = {**ENGINES, "echo": echo_spec()}
    engines, unavailable = build_engines(settings(tmp_path, "echo,nowhere"), *deps, table=table)
    assert isinstance(engines["echo"], EchoEngine)
    assert engines["echo"].greeting == "hello from home"  # built from the settings
    assert unavailable == {"nowhere": "unknown engine 'nowhere' in AIML_ENGINES"}


def test_what_a_spec_needs_is_checked_before_it_is_built(
    tmp_path: Path, deps: tuple[ArtifactCache, ModelPool]
) -> None:
    def never(settings: Settings, deps: EngineDeps) -> Engine:
        raise AssertionError("built without what it needs")

    table = {
        "echo": echo_spec(build=never, requires=("no_such_module_here",)),
        "echo2": echo_spec(name="echo2", build=never, unconfigured=lambda s: "needs a URL"),
    }
    engines, unavailable = build_engines(settings(tmp_path, "echo,echo2"), *deps, table=table)
    assert engines == {}
    assert "no_such_module_here" in unavailable["echo"]
    assert unavailable["echo2"] == "needs a URL"


def test_the_table_agrees_with_the_engines_and_the_settings() -> None:
    from aiml.engines.llamacpp.engine import LlamaCppEngine
    from aiml.engines.media.onnx import OnnxEngine
    from aiml.engines.media.whisper import WhisperEngine
    from aiml.engines.remote.ollama import OllamaEngine
    from aiml.engines.remote.openai import OpenAIEngine
    from aiml.engines.transformers.engine import TransformersEngine

    classes = (
        OllamaEngine,
        OpenAIEngine,
        LlamaCppEngine,
        TransformersEngine,
        WhisperEngine,
        OnnxEngine,
    )
    assert {cls.name: cls.tasks for cls in classes} == {s.name: s.tasks for s in ENGINES.values()}
    for spec in ENGINES.values():
        assert set(spec.settings) <= set(Settings.model_fields), spec.name


def test_name_tags_pick_the_engine_and_formats_the_file_engine() -> None:
    for spec in ENGINES.values():
        for tag in spec.name_tags:
            version = RegistryVersion(name="m", version=1, tags={tag: "x"})
            assert engine_of(version) == spec.name
    declared = RegistryVersion(name="m", version=1, tags={"inference_engine": "openai"})
    assert engine_of(declared) == "openai"
    assert (engine_for_format("gguf"), engine_for_format("hf")) == ("llamacpp", "transformers")
    assert engine_for_format("gguf", {"echo": echo_spec(formats=("gguf",))}) == "echo"
    assert engine_for_format("onnx") == "onnx" and engine_for_format("ct2") == "whisper"
    assert engine_for_format("tflite") is None
