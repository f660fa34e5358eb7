"""The Ollama engine through the official client against the stand-in server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from aiml.engines.remote.ollama import OllamaEngine, is_valid_ollama_name, normalize_ollama_name
from aiml.errors import (
    AimlError,
    EngineError,
    EngineOverloaded,
    EngineRejected,
    EngineTimeout,
    EngineUnavailable,
    ModelNotFound,
    ModelNotServable,
)
from aiml.types import ChatMessage, RegistryVersion, ResolvedModel, SamplingParams, Source
from tests.conftest import RunningOllama
from tests.fakes.servers import free_port


def model(name: str) -> ResolvedModel:
    return ResolvedModel(engine="ollama", engine_model=name, source=Source.DIRECT)


@pytest.fixture
async def engine(ollama: RunningOllama) -> AsyncIterator[OllamaEngine]:
    engine = OllamaEngine(ollama.url, timeout_s=1.0, connect_timeout_s=1.0)
    yield engine
    await engine.aclose()


def test_latest_rule() -> None:
    assert normalize_ollama_name("llama2") == "llama2:latest"
    assert normalize_ollama_name("llama2:13b") == "llama2:13b"
    assert normalize_ollama_name("user/model") == "user/model:latest"
    assert normalize_ollama_name("host:5000/model") == "host:5000/model:latest"
    assert is_valid_ollama_name("library/llama2:7b")
    assert not is_valid_ollama_name("../../etc/passwd")
    assert not is_valid_ollama_name("http://evil/x")


async def test_find_model_is_exact(engine: OllamaEngine, ollama: RunningOllama) -> None:
    assert await engine.find_model("llama2:7b") == "llama2:7b"
    assert await engine.find_model("llama2") is None  # only :7b and :13b exist
    assert await engine.find_model("llama") is None
    assert await engine.find_model("nomic-embed-text") == "nomic-embed-text:latest"
    ollama.state.add("llama2")
    assert await engine.find_model("llama2") == "llama2:latest"


async def test_generate_chat_embed_and_options(engine: OllamaEngine, ollama: RunningOllama) -> None:
    params = SamplingParams(
        max_tokens=3, temperature=0.2, top_p=0.9, top_k=20, stop=("x",), seed=7, repeat_penalty=1.1
    )
    generation = await engine.generate(model("llama2:7b"), "one two three four", params)
    assert generation.text == "llama2:7b heard: one"
    assert generation.finish_reason == "length"
    assert generation.completion_tokens == 3
    sent = ollama.state.received[-1][1]
    assert sent["options"] == {
        "num_predict": 3,
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 20,
        "stop": ["x"],
        "seed": 7,
        "repeat_penalty": 1.1,
    }
    assert sent["stream"] is False

    reply = await engine.chat(model("llama2:7b"), [ChatMessage("user", "hi")], SamplingParams())
    assert reply.text == "llama2:7b heard: hi"
    vectors = await engine.embed(model("nomic-embed-text"), ["a", "b"])
    assert len(vectors.vectors) == 2 and len(vectors.vectors[0]) == 8


async def test_streaming_yields_pieces_then_final_counts(engine: OllamaEngine) -> None:
    chunks = [c async for c in engine.stream_generate(model("llama2:7b"), "a b", SamplingParams())]
    assert "".join(c.text for c in chunks) == "llama2:7b heard: a b"
    assert chunks[-1].done and chunks[-1].final is not None
    assert chunks[-1].final.completion_tokens == 4
    chat = [
        c
        async for c in engine.stream_chat(
            model("llama2:7b"), [ChatMessage("user", "yo")], SamplingParams()
        )
    ]
    assert "".join(c.text for c in chat) == "llama2:7b heard: yo"


async def test_closing_a_stream_closes_the_request(
    engine: OllamaEngine, ollama: RunningOllama
) -> None:
    ollama.state.token_delay_s = 0.2
    stream = engine.stream_generate(
        model("llama2:7b"), "many words here to stream out", SamplingParams()
    )
    first = await anext(stream)
    assert first.text
    await stream.aclose()
    deadline = asyncio.get_running_loop().time() + 5
    while not ollama.state.streams_closed_early:  # noticed at the stand-in's next write
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)
    assert ollama.state.streams_closed_early == 1


async def test_error_mapping(engine: OllamaEngine, ollama: RunningOllama) -> None:
    with pytest.raises(ModelNotFound):
        await engine.generate(model("absent:1b"), "x", SamplingParams())
    with pytest.raises(EngineRejected, match="does not support generate") as rejected:
        await engine.generate(model("nomic-embed-text"), "x", SamplingParams())
    assert rejected.value.status_code == 400  # Ollama's own status, passed on
    ollama.state.fail_mid_stream = "model runner crashed"
    with pytest.raises(EngineError, match="model runner crashed"):
        async for _ in engine.stream_generate(model("llama2:7b"), "a b", SamplingParams()):
            pass
    ollama.state.fail_mid_stream = None
    ollama.state.delay_s = 1.5
    with pytest.raises(EngineTimeout):
        await engine.generate(model("llama2:7b"), "x", SamplingParams())


async def test_connection_refused_is_unavailable() -> None:
    engine = OllamaEngine(f"http://127.0.0.1:{free_port()}", timeout_s=1.0, connect_timeout_s=1.0)
    with pytest.raises(EngineUnavailable):
        await engine.find_model("llama2")
    with pytest.raises(EngineUnavailable):
        await engine.health()
    with pytest.raises(EngineUnavailable):
        async for _ in engine.stream_chat(model("m"), [ChatMessage("user", "x")], SamplingParams()):
            pass
    await engine.aclose()


async def test_pull_only_when_allowed(ollama: RunningOllama) -> None:
    ollama.state.pullable.add("tinyllama")
    forbidden = OllamaEngine(ollama.url, timeout_s=2.0, connect_timeout_s=1.0)
    version = RegistryVersion(name="tiny", version=1, tags={"ollama_model_name": "tinyllama"})
    with pytest.raises(ModelNotFound, match="maps to ollama model 'tinyllama'"):
        await forbidden.model_for_version(version)
    assert ollama.state.counts["POST /api/pull"] == 0
    allowed = OllamaEngine(ollama.url, timeout_s=2.0, connect_timeout_s=1.0, allow_pull=True)
    assert await allowed.model_for_version(version) == "tinyllama:latest"
    assert ollama.state.counts["POST /api/pull"] == 1
    await forbidden.aclose()
    await allowed.aclose()


async def test_tag_values_that_are_not_ollama_names_are_refused(engine: OllamaEngine) -> None:
    bad = RegistryVersion(name="m", version=1, tags={"ollama_model_name": "../../secrets"})
    with pytest.raises(ModelNotServable, match="invalid"):
        await engine.model_for_version(bad)
    good = RegistryVersion(
        name="m", version=1, tags={}, model_tags={"ollama_model_name": "llama2:7b"}
    )
    assert await engine.model_for_version(good) == "llama2:7b"


@pytest.mark.parametrize(
    ("status", "headers", "expected", "aiml_status", "retry_after"),
    [
        (400, {}, EngineRejected, 400, None),
        (413, {}, EngineRejected, 413, None),
        (422, {}, EngineRejected, 422, None),
        (429, {"Retry-After": "7"}, EngineOverloaded, 429, 7),
        (503, {"Retry-After": "3"}, EngineUnavailable, 503, 3),
        (503, {}, EngineUnavailable, 503, None),
        (500, {}, EngineError, 502, None),
        (401, {}, EngineError, 502, None),  # aiml's credentials, not the client's request
        (504, {}, EngineTimeout, 504, None),
    ],
)
async def test_upstream_statuses_by_the_engine_contract(
    engine: OllamaEngine,
    ollama: RunningOllama,
    status: int,
    headers: dict[str, str],
    expected: type[AimlError],
    aiml_status: int,
    retry_after: int | None,
) -> None:
    ollama.state.answer = (status, "the prompt is longer than the context (4096)", headers)
    for call in (
        engine.chat(model("llama2:7b"), [ChatMessage("user", "hi")], SamplingParams()),
        anext(engine.stream_generate(model("llama2:7b"), "hi", SamplingParams())),
        engine.embed(model("nomic-embed-text"), ["a"]),
    ):
        with pytest.raises(expected) as raised:
            await call
        assert type(raised.value) is expected
        assert (raised.value.status_code, raised.value.retry_after) == (aiml_status, retry_after)
        assert "the prompt is longer than the context (4096)" in raised.value.message


async def test_a_python_error_in_the_engine_is_not_an_engine_error(
    engine: OllamaEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiml's own bug stays a bug (500), never a 502 that blames the engine."""

    async def broken(**kwargs: object) -> object:
        raise KeyError("a bug in aiml")

    monkeypatch.setattr(engine._client, "chat", broken)
    with pytest.raises(KeyError):
        await engine.chat(model("llama2:7b"), [ChatMessage("user", "hi")], SamplingParams())
