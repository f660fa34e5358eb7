"""Shared fixtures: a real sqlite MLflow registry, a stand-in Ollama server, a running aiml."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from mlflow import MlflowClient

from aiml.api.app import create_app
from aiml.bundled import BUNDLED
from aiml.inference.catalog import ModelCatalog, Registration
from aiml.registry.mlflow import MlflowRegistry
from aiml.registry.references import parse_reference
from aiml.services import Services, build_services
from aiml.settings import Settings
from aiml.types import ResolvedModel
from tests.fakes.ollama_server import OllamaStandIn
from tests.fakes.servers import ServerThread
from tests.fakes.tiny_models import tiny_causal_lm, tiny_classifier, tiny_encoder

# A test that joined a Ray cluster leaves Serve's handle threads behind; once the cluster is
# gone they would start a local Ray in this process (ray.init's auto-connect). Ray reads
# this when it is first imported, which no import above does.
os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")


class CountingClient:
    """Wraps an ``MlflowClient`` and counts every method call that reaches it."""

    def __init__(self, inner: MlflowClient) -> None:
        self._inner = inner
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.calls[name] += 1
            return attr(*args, **kwargs)

        return counted


@dataclass
class Registry:
    """A real MLflow registry in a temp folder, and helpers to fill it as users do."""

    uri: str
    client: MlflowClient
    artifacts: Path

    def register(
        self,
        name: str,
        ollama_model: str | None = None,
        *,
        task: str | None = "text-generation",
        engine: str | None = "ollama",
        alias: str | None = None,
        model_tags: dict[str, str] | None = None,
        tags: dict[str, str] | None = None,
    ) -> int:
        """Register a version the way the earlier system did (tags on the version)."""
        try:
            self.client.create_registered_model(name, tags=model_tags)
        except Exception as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(getattr(exc, "error_code", "")):
                raise
        tags = {
            key: value
            for key, value in {
                "ollama_model_name": ollama_model,
                "inference_task": task,
                "inference_engine": engine,
            }.items()
            if value is not None
        } | (tags or {})
        mv = self.client.create_model_version(
            name, source=str(self.artifacts / name), tags=tags, await_creation_for=0
        )
        if alias is not None:
            self.client.set_registered_model_alias(name, alias, mv.version)
        return int(mv.version)

    def register_files(self, path: Path, name: str, **options: Any) -> Registration:
        """Register a GGUF file or model folder as `aiml register` does."""
        catalog = ModelCatalog(self.adapter(), {})
        # Callable from sync and async tests alike: its own loop, on its own thread.
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, catalog.register_files(path, name, **options)).result()

    def adapter(self) -> MlflowRegistry:
        return MlflowRegistry(self.client, uri=self.uri, artifact_location=self.artifacts.as_uri())


@dataclass
class RunningOllama:
    state: OllamaStandIn
    server: ServerThread

    @property
    def url(self) -> str:
        return self.server.url


@dataclass
class RunningAiml:
    """aiml under a real uvicorn server, with the spy that counts registry calls."""

    server: ServerThread
    spy: CountingClient
    holder: list[Services] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def services(self) -> Services:
        return self.holder[0]

    def client(self, timeout: float = 30, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout, **kwargs)

    def openai(self) -> openai.OpenAI:
        """The official OpenAI client on this aiml's /v1 (no retries: tests see each call)."""
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="x", max_retries=0)

    def infer(
        self, model_name: str, *, task: str = "text-generation", **extra: Any
    ) -> httpx.Response:
        data = extra.pop("data", None)
        if data is None:
            data = (
                {"messages": [{"role": "user", "content": "hi there"}]}
                if task == "chat"
                else {"inputs": "hello world"}
            )
        body = {"task": task, "engine": "ollama", "model_name": model_name, "data": data, **extra}
        with self.client() as client:
            return client.post("/inference/infer", json=body)


def standard_stand_in() -> OllamaStandIn:
    state = OllamaStandIn()
    state.add("llama2:7b")
    state.add("llama2:13b")
    state.add("qwen2:0.5b", family="qwen2", capabilities=("completion", "tools", "vision"))
    state.add("nomic-embed-text:latest", family="nomic-bert", embedding_only=True)
    return state


@pytest.fixture
def ollama() -> Iterator[RunningOllama]:
    state = standard_stand_in()
    server = ServerThread(state.app(), lifespan="off").start()
    yield RunningOllama(state, server)
    server.stop()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An sqlite registry with MLflow's tables made once: a copy per test costs ~1 ms, where
    MLflow's migrations on each new file cost ~1.5 s (minutes over the suite)."""
    path = tmp_path_factory.mktemp("registry-template") / "registry.db"
    mlflow = str(Path(sys.executable).parent / "mlflow")
    subprocess.run([mlflow, "db", "upgrade", f"sqlite:///{path}"], check=True, capture_output=True)
    return path


def fresh_sqlite_registry(tmp_path: Path, template: Path) -> Registry:
    shutil.copyfile(template, tmp_path / "registry.db")
    uri = f"sqlite:///{tmp_path / 'registry.db'}"
    return Registry(
        uri=uri,
        client=MlflowClient(tracking_uri=uri, registry_uri=uri),
        artifacts=tmp_path / "artifacts",
    )


@pytest.fixture
def registry(tmp_path: Path, sqlite_template: Path) -> Registry:
    return fresh_sqlite_registry(tmp_path, sqlite_template)


def make_settings(tmp_path: Path, registry_uri: str, ollama_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "home": tmp_path / "home",
        "mlflow_tracking_uri": registry_uri,
        "ollama_host": ollama_url,
        "ollama_timeout_s": 2.0,
        "ollama_connect_timeout_s": 1.0,
        **overrides,
    }
    return Settings(**values)


def launch_aiml(
    tmp_path: Path, registry: Registry, ollama: RunningOllama, **overrides: Any
) -> RunningAiml:
    """aiml against ``registry`` and the stand-in, on a real server in a thread."""
    settings = make_settings(tmp_path, registry.uri, ollama.url, **overrides)
    spy = CountingClient(
        MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.registry_uri)
    )
    holder: list[Services] = []

    def factory(s: Settings) -> Services:
        instrumented = MlflowRegistry(spy, uri=s.registry_uri, artifact_location=None)  # type: ignore[arg-type]
        services = build_services(s, registry=instrumented)
        holder.append(services)
        return services

    server = ServerThread(create_app(settings, services_factory=factory)).start()
    return RunningAiml(server=server, spy=spy, holder=holder)


@pytest.fixture
def start_aiml(
    tmp_path: Path, registry: Registry, ollama: RunningOllama
) -> Iterator[Callable[..., RunningAiml]]:
    """Start aiml against the registry and stand-in; keyword arguments override settings."""
    started: list[RunningAiml] = []

    def start(**overrides: Any) -> RunningAiml:
        running = launch_aiml(tmp_path, registry, ollama, **overrides)
        started.append(running)
        return running

    yield start
    for running in started:
        running.server.stop()


@dataclass
class Shared:
    """One aiml for the tests that only send requests (agent APIs): SmolLM2 as ``smol``
    (chat), ``llama2-7b-chat`` on the stand-in, a transformers LM as ``tiny-lm``. Loading
    the model once, not per test, keeps the suite within its time."""

    aiml: RunningAiml
    ollama: RunningOllama
    registry: Registry


@pytest.fixture
def shared_aiml(shared: Shared) -> RunningAiml:
    return shared.aiml


@pytest.fixture(scope="session")
def shared(
    tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path, model_files: ModelFiles
) -> Iterator[Shared]:
    folder = tmp_path_factory.mktemp("shared-aiml")
    registry = fresh_sqlite_registry(folder, sqlite_template)
    registry.register_files(model_files.smollm2, "smol", task="chat")
    registry.register("llama2-7b-chat", "llama2:7b", task="chat")
    registry.register_files(model_files.tiny_lm_a, "tiny-lm", task="chat")
    state = standard_stand_in()
    stand_in = ServerThread(state.app(), lifespan="off").start()
    ollama = RunningOllama(state, stand_in)
    aiml = launch_aiml(folder, registry, ollama)
    yield Shared(aiml, ollama, registry)
    aiml.server.stop()
    stand_in.stop()


@dataclass(frozen=True)
class ModelFiles:
    """Model files on disk: real ones shipped by PyPI packages, and random tiny ones."""

    smollm2: Path
    gemma3: Path
    minilm: Path
    whisper: Path  # Whisper tiny.en, CTranslate2
    tiny_lm_a: Path
    tiny_lm_b: Path
    tiny_classifier: Path
    tiny_encoder: Path


@pytest.fixture(scope="session")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> ModelFiles:
    root = tmp_path_factory.mktemp("model-files")
    located = {model.registered_name: model.locate(root) for model in BUNDLED}
    return ModelFiles(
        smollm2=located["smollm2-135m-instruct"],
        gemma3=located["gemma3-270m"],
        minilm=located["all-minilm-l6-v2"],
        whisper=located["whisper-tiny-en"],
        tiny_lm_a=tiny_causal_lm(root / "tiny-lm-a", seed=0),
        tiny_lm_b=tiny_causal_lm(root / "tiny-lm-b", seed=1),
        tiny_classifier=tiny_classifier(root / "tiny-classifier"),
        tiny_encoder=tiny_encoder(root / "tiny-encoder"),
    )


@pytest.fixture
async def local_services(
    tmp_path: Path, registry: Registry
) -> AsyncIterator[Callable[..., Services]]:
    """Services built in the test's own event loop (engine-level tests, no HTTP)."""
    built: list[Services] = []

    def build(**overrides: Any) -> Services:
        settings = make_settings(
            tmp_path,
            registry.uri,
            "http://127.0.0.1:9",
            engines="llamacpp,transformers",
            **overrides,
        )
        services = build_services(settings, registry=registry.adapter())
        services.start()
        built.append(services)
        return services

    yield build
    for services in built:
        await services.aclose()


async def resolve(services: Services, engine: str, reference: str) -> ResolvedModel:
    return await services.router.resolver.resolve(parse_reference(reference), engine)
