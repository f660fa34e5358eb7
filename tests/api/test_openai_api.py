"""``/v1`` with the official ``openai`` client: sync, async, streaming, errors, hang-ups."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

import openai
import pytest

from tests.conftest import ModelFiles, Registry, RunningAiml, RunningOllama

HELLO = [{"role": "user", "content": "Write one sentence about cats."}]


@pytest.fixture
def aiml(
    start_aiml: Callable[..., RunningAiml], registry: Registry, model_files: ModelFiles
) -> RunningAiml:
    registry.register("llama2-7b-chat", "llama2:7b", task="chat", alias="production")
    registry.register_files(model_files.smollm2, "smol", task="chat", alias="default")
    registry.register_files(model_files.minilm, "minilm")
    return start_aiml()


def client(aiml: RunningAiml) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{aiml.url}/v1", api_key="not-needed", max_retries=0)


def test_chat_on_every_kind_of_model(aiml: RunningAiml) -> None:
    api = client(aiml)
    proxied = api.chat.completions.create(model="llama2-7b-chat@production", messages=HELLO)
    assert proxied.choices[0].message.content == "llama2:7b heard: Write one sentence about cats."
    assert proxied.choices[0].finish_reason == "stop"
    assert proxied.usage is not None
    assert proxied.usage.completion_tokens == 7  # the stand-in: one token per word
    assert proxied.model == "llama2-7b-chat@production"

    local = api.chat.completions.create(
        model="smol@default", messages=HELLO, max_tokens=40, temperature=0
    )
    assert "cat" in (local.choices[0].message.content or "").lower()
    assert local.usage is not None
    assert local.usage.prompt_tokens > 5
    assert local.usage.total_tokens == local.usage.prompt_tokens + local.usage.completion_tokens

    direct = api.chat.completions.create(model="ollama/llama2:13b", messages=HELLO)
    assert (direct.choices[0].message.content or "").startswith("llama2:13b heard:")
    limited = api.chat.completions.create(model="smol", messages=HELLO, max_completion_tokens=3)
    assert limited.choices[0].finish_reason == "length"
    assert limited.usage is not None
    assert limited.usage.completion_tokens == 3


def test_streaming_chat_with_usage(aiml: RunningAiml) -> None:
    stream = client(aiml).chat.completions.create(
        model="smol", messages=HELLO, max_tokens=30, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert text.strip()
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0
    whole = client(aiml).chat.completions.create(
        model="smol", messages=HELLO, max_tokens=30, temperature=0
    )
    assert whole.choices[0].message.content == text  # greedy: the same tokens either way


def test_async_client_completions_embeddings_and_models(aiml: RunningAiml) -> None:
    async def main() -> None:
        api = openai.AsyncOpenAI(base_url=f"{aiml.url}/v1", api_key="x", max_retries=0)
        completion, embedded, streamed = await asyncio.gather(
            api.completions.create(model="llama2-7b-chat", prompt="hello there", max_tokens=3),
            api.embeddings.create(model="minilm", input=["cat", "kitten", "stock market"]),
            api.completions.create(model="ollama/llama2:7b", prompt="one two", stream=True),
        )
        assert completion.choices[0].text == "llama2:7b heard: hello"  # chat model: one turn
        assert completion.choices[0].finish_reason == "length"
        cat, kitten, stock = (e.embedding for e in embedded.data)  # sent base64, decoded
        assert len(cat) == 384
        assert _cos(cat, kitten) > _cos(cat, stock)
        assert embedded.usage.prompt_tokens > 0
        pieces = [c.choices[0].text async for c in streamed]
        assert "".join(pieces) == "llama2:7b heard: one two"
        floats = await api.embeddings.create(model="minilm", input="cat", encoding_format="float")
        assert floats.data[0].embedding == pytest.approx(cat, abs=1e-6)
        models = [m.id async for m in api.models.list()]
        assert {
            "llama2-7b-chat",
            "llama2-7b-chat@production",
            "smol",
            "smol@default",
            "minilm",
        } <= set(models)
        retrieved = await api.models.retrieve("smol@default")
        assert retrieved.id == "smol@default"
        assert (retrieved.model_extra or {})["capabilities"] == ["completion", "chat", "tools"]
        embedder = await api.models.retrieve("minilm")
        assert (embedder.model_extra or {})["capabilities"] == ["embedding"]
        await api.close()

    asyncio.run(main())


def test_errors_are_openai_errors(aiml: RunningAiml, ollama: RunningOllama) -> None:
    api = client(aiml)
    with pytest.raises(openai.NotFoundError) as missing:
        api.chat.completions.create(model="no-such-model", messages=HELLO)
    assert missing.value.code == "model_not_found"
    assert "<engine>/<name>" in missing.value.message
    for kwargs, param in (
        ({"n": 2}, "n"),
        ({"presence_penalty": 1.0}, "presence_penalty"),
        (
            {
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "tool_choice": {"type": "function", "function": {"name": "g"}},
            },
            "tool_choice",
        ),
        ({"temperature": 5}, "temperature"),
    ):
        with pytest.raises(openai.BadRequestError) as bad:
            api.chat.completions.create(model="smol", messages=HELLO, **kwargs)  # type: ignore[call-overload]
        assert bad.value.param == param
        assert bad.value.status_code == 400
    with pytest.raises(openai.BadRequestError, match="fetches nothing"):
        api.chat.completions.create(
            model="llama2-7b-chat",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "http://169.254.169.254/"}}
                    ],
                }
            ],
        )
    with pytest.raises(openai.NotFoundError):
        api.models.retrieve("ollama/absent:1b")
    ollama.state.fail_mid_stream = "the runner crashed"
    with pytest.raises(openai.APIError, match="the runner crashed"):
        for _ in api.chat.completions.create(model="llama2-7b-chat", messages=HELLO, stream=True):
            pass
    ollama.server.stop()
    with pytest.raises(openai.InternalServerError) as down:
        api.chat.completions.create(model="llama2-7b-chat", messages=HELLO)
    assert down.value.status_code == 503
    assert down.value.code == "engine_unavailable"


def test_a_client_hanging_up_frees_the_engine_within_a_second(
    aiml: RunningAiml, ollama: RunningOllama
) -> None:
    api = client(aiml)
    stream = api.chat.completions.create(model="smol", messages=HELLO, max_tokens=1000, stream=True)
    next(iter(stream))
    next(iter(stream))
    stream.close()
    hung_up = time.monotonic()
    with aiml.client() as http:
        while any(m["in_use"] for m in http.get("/inference/loaded").json()["models"]):
            assert time.monotonic() - hung_up < 1.0
            time.sleep(0.02)
    ollama.state.token_delay_s = 0.05
    proxied = api.chat.completions.create(
        model="llama2-7b-chat", messages=[{"role": "user", "content": "word " * 200}], stream=True
    )
    next(iter(proxied))
    proxied.close()
    hung_up = time.monotonic()
    while ollama.state.streams_closed_early == 0:  # the Ollama request was closed
        assert time.monotonic() - hung_up < 1.0
        time.sleep(0.02)


def _cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
