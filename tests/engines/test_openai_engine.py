"""The openai engine against a real OpenAI-compatible server: llama-cpp-python's own."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import pytest

from tests.conftest import ModelFiles, Registry, RunningAiml
from tests.fakes.processes import Process
from tests.fakes.servers import free_port

pytestmark = pytest.mark.slow
CATS = [{"role": "user", "content": "Write one sentence about cats."}]


def start_llama_server(tmp_path: Path, model: Path, *extra: str) -> Process:
    port = free_port()
    argv = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(model),
        "--model_alias", "smollm2", "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
        *extra,
    ]  # fmt: skip
    server = Process(
        argv,
        env={},
        log=tmp_path / "llama-server.log",
        health_url=f"http://127.0.0.1:{port}/v1/models",
    )
    server.env = {**__import__("os").environ}
    server.start()
    return server


@pytest.fixture
def llama_server(tmp_path: Path, model_files: ModelFiles) -> Iterator[Process]:
    server = start_llama_server(tmp_path, model_files.smollm2)
    yield server
    server.stop()


def test_tools_are_passed_through(
    tmp_path: Path,
    start_aiml: Callable[..., RunningAiml],
    registry: Registry,
    model_files: ModelFiles,
) -> None:
    # llama-cpp-python's server does tool calls in its chatml-function-calling format.
    server = start_llama_server(
        tmp_path, model_files.smollm2, "--chat_format", "chatml-function-calling"
    )
    try:
        base = server.health_url.removesuffix("/models")
        tags = {"openai_model_name": "smollm2"}
        registry.register("remote-smol", None, engine="openai", task="chat", tags=tags)
        api = openai.OpenAI(base_url=f"{start_aiml(openai_base_url=base).url}/v1", api_key="x")
        city = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
        tool = {"type": "function", "function": {"name": "get_weather", "parameters": city}}
        answer = api.chat.completions.create(
            model="remote-smol", messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=[tool], tool_choice={"type": "function", "function": {"name": "get_weather"}},  # type: ignore[list-item]
            max_tokens=60, temperature=0,
        )  # fmt: skip
        (call,) = answer.choices[0].message.tool_calls or []
        assert call.function.name == "get_weather" and "city" in call.function.arguments
    finally:
        server.stop()


def test_the_openai_engine_serves_a_registered_remote_model(
    llama_server: Process, start_aiml: Callable[..., RunningAiml], registry: Registry
) -> None:
    base = llama_server.health_url.removesuffix("/models")
    registry.register(
        "remote-smol",
        None,
        engine="openai",
        task="chat",
        alias="prod",
        tags={"openai_model_name": "smollm2"},
    )
    registry.register(
        "remote-ghost", None, engine="openai", task="chat", tags={"openai_model_name": "not-served"}
    )
    aiml = start_aiml(openai_base_url=base)

    reply = aiml.infer(
        "remote-smol@prod",
        task="chat",
        engine="openai",
        options={"max_tokens": 30, "temperature": 0},
    )
    assert reply.status_code == 200, reply.text
    assert (
        "cat" in reply.json()["result"]["message"]["content"].lower()
        or reply.json()["result"]["message"]["content"]
    )
    assert reply.json()["result"]["metadata"]["prompt_tokens"] > 0

    api = openai.OpenAI(base_url=f"{aiml.url}/v1", api_key="x", max_retries=0)
    stream = api.chat.completions.create(
        model="remote-smol@prod", messages=CATS, max_tokens=20, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(streamed.split()) >= 3, streamed  # real words from the remote model
    assert chunks[-1].usage is not None
    assert 0 < chunks[-1].usage.completion_tokens <= 20

    by_engine_name = api.completions.create(
        model="openai/smollm2", prompt="The capital of France is", max_tokens=5
    )
    assert by_engine_name.usage is not None
    assert by_engine_name.usage.completion_tokens == 5

    missing = aiml.infer("remote-ghost", task="chat", engine="openai")
    assert missing.status_code == 404
    assert "not-served" in missing.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError):  # a request can never name a server
        api.chat.completions.create(model="openai/http://169.254.169.254/latest", messages=CATS)


def test_hanging_up_closes_the_remote_request(
    llama_server: Process, start_aiml: Callable[..., RunningAiml], registry: Registry
) -> None:
    base = llama_server.health_url.removesuffix("/models")
    aiml = start_aiml(openai_base_url=base)
    api = openai.OpenAI(base_url=f"{aiml.url}/v1", api_key="x", max_retries=0)
    stream = api.chat.completions.create(
        model="openai/smollm2", messages=CATS, max_tokens=1500, stream=True
    )
    next(iter(stream))
    stream.close()
    # llama.cpp's server runs one request at a time: had the abandoned 1500 tokens gone on
    # (~15 s here), this one would wait for them.
    started = time.monotonic()
    api.chat.completions.create(model="openai/smollm2", messages=CATS, max_tokens=4)
    assert time.monotonic() - started < 3.0


def test_the_remote_server_going_away_is_a_503(
    llama_server: Process, start_aiml: Callable[..., RunningAiml]
) -> None:
    base = llama_server.health_url.removesuffix("/models")
    aiml = start_aiml(openai_base_url=base)
    assert (
        aiml.infer("openai/smollm2", task="chat", engine="openai").status_code == 404
    )  # a reference, not a route
    api = openai.OpenAI(base_url=f"{aiml.url}/v1", api_key="x", max_retries=0)
    assert api.chat.completions.create(model="openai/smollm2", messages=CATS, max_tokens=2).choices
    llama_server.stop()
    with pytest.raises(openai.InternalServerError) as down:
        api.chat.completions.create(model="openai/smollm2", messages=CATS, max_tokens=2)
    assert down.value.status_code == 503
