"""The llama.cpp engine on real GGUF models shipped by PyPI packages."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import pytest

from aiml.errors import ModelNotServable
from aiml.services import Services
from aiml.types import ChatMessage, SamplingParams
from tests.conftest import ModelFiles, Registry, resolve

CATS = [ChatMessage("user", "Write one sentence about cats.")]


@pytest.fixture
def smol(registry: Registry, model_files: ModelFiles) -> None:
    registry.register_files(model_files.smollm2, "smol", task="chat", alias="prod")


async def test_chat_answers_in_sensible_english(
    smol: None, local_services: Callable[..., Services]
) -> None:
    services = local_services()
    model = await resolve(services, "llamacpp", "smol@prod")
    engine = services.engines["llamacpp"]
    reply = await engine.chat(model, CATS, SamplingParams(max_tokens=60, temperature=0))
    words = re.findall(r"[A-Za-z']+", reply.text)
    assert len(words) >= 5, reply.text
    assert sum(len(w) for w in words) / max(1, len(reply.text)) > 0.6  # mostly letters
    assert reply.prompt_tokens and reply.prompt_tokens > 5  # the chat template was applied
    assert reply.completion_tokens and 0 < reply.completion_tokens <= 60
    assert reply.finish_reason in {"stop", "length"}
    completion = await engine.generate(
        model, "The capital of France is", SamplingParams(max_tokens=8, temperature=0)
    )
    assert completion.finish_reason == "length"
    assert completion.completion_tokens == 8
    assert completion.prompt_tokens == 5


async def test_a_model_without_a_chat_template_refuses_chat(
    registry: Registry, model_files: ModelFiles, local_services: Callable[..., Services]
) -> None:
    registry.register_files(model_files.gemma3, "gemma", task="text-generation")
    services = local_services()
    model = await resolve(services, "llamacpp", "gemma")
    engine = services.engines["llamacpp"]
    text = await engine.generate(model, "Cats are", SamplingParams(max_tokens=12, temperature=0))
    assert text.text.strip()
    with pytest.raises(ModelNotServable, match="no chat template"):
        await engine.chat(model, CATS, SamplingParams(max_tokens=5))


async def test_embeddings_from_a_gguf_registered_for_them(
    registry: Registry, model_files: ModelFiles, local_services: Callable[..., Services]
) -> None:
    registry.register_files(model_files.smollm2, "smol-embed", task="embeddings")
    registry.register_files(model_files.smollm2, "smol-chat", task="chat")
    services = local_services()
    engine = services.engines["llamacpp"]
    embedder = await resolve(services, "llamacpp", "smol-embed")
    result = await engine.embed(embedder, ["a cat", "a kitten"])
    assert len(result.vectors) == 2
    assert len(result.vectors[0]) == 576
    with pytest.raises(ModelNotServable, match="embeds only with models registered"):
        await engine.embed(await resolve(services, "llamacpp", "smol-chat"), ["x"])


async def test_a_client_that_goes_away_frees_the_model_within_a_second(
    smol: None, local_services: Callable[..., Services]
) -> None:
    services = local_services()
    model = await resolve(services, "llamacpp", "smol")
    engine = services.engines["llamacpp"]
    stream = engine.stream_chat(model, CATS, SamplingParams(max_tokens=500, temperature=0.7))
    first = await anext(stream)
    assert first.text
    hung_up = asyncio.get_running_loop().time()
    await stream.aclose()
    (entry,) = services.pool.entries()
    while entry.users or entry.loaded.stats().running:  # its sequence is dropped next step
        assert asyncio.get_running_loop().time() - hung_up < 1.0
        await asyncio.sleep(0.01)
    # the next request is served at once, not after the abandoned 500 tokens
    started = asyncio.get_running_loop().time()
    await engine.chat(model, CATS, SamplingParams(max_tokens=4))
    assert asyncio.get_running_loop().time() - started < 2.0


async def test_a_prompt_longer_than_the_context_is_a_422(
    smol: None, local_services: Callable[..., Services]
) -> None:
    from aiml.errors import InvalidRequest

    services = local_services(llamacpp_n_ctx=256)
    engine = services.engines["llamacpp"]
    model = await resolve(services, "llamacpp", "smol")
    with pytest.raises(InvalidRequest, match="context holds 256"):
        await engine.generate(model, "cat " * 300, SamplingParams(max_tokens=4))
    # within the window, max_tokens is cut to what still fits
    out = await engine.generate(model, "cat " * 50, SamplingParams(max_tokens=400, temperature=0))
    assert out.prompt_tokens is not None
    assert out.completion_tokens is not None
    assert out.prompt_tokens + out.completion_tokens <= 256
