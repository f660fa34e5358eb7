"""The transformers engine: real MiniLM embeddings, tiny random models for the plumbing."""

from __future__ import annotations

import asyncio
import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from aiml.engines.transformers.batching import MicroBatcher
from aiml.errors import InvalidRequest, ModelNotServable
from aiml.services import Services
from aiml.types import ChatMessage, SamplingParams
from tests.conftest import ModelFiles, Registry, resolve


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


async def test_minilm_embeddings_mean_what_they_should(
    registry: Registry, model_files: ModelFiles, local_services: Callable[..., Services]
) -> None:
    registry.register_files(model_files.minilm, "minilm")
    services = local_services()
    model = await resolve(services, "transformers", "minilm")
    cat, kitten, stock = (
        await services.engines["transformers"].embed(model, ["cat", "kitten", "stock market"])
    ).vectors
    assert len(cat) == 384
    assert cosine(cat, kitten) > cosine(cat, stock) + 0.3
    assert math.isclose(sum(x * x for x in cat), 1.0, rel_tol=1e-4)  # the model's Normalize module


async def test_concurrent_embeddings_are_batched_with_the_same_results(
    registry: Registry, model_files: ModelFiles, local_services: Callable[..., Services]
) -> None:
    registry.register_files(model_files.minilm, "minilm")
    services = local_services(embed_max_wait_ms=20.0, embed_max_batch=32)
    engine = services.engines["transformers"]
    model = await resolve(services, "transformers", "minilm")
    texts = [f"sentence number {i} about cats" for i in range(16)]
    alone = [(await engine.embed(model, [text])).vectors[0] for text in texts[:2]]
    (entry,) = services.pool.entries()
    batcher: MicroBatcher[str, list[float]] = entry.extras["batcher"]
    before = batcher.batches
    together = await asyncio.gather(*(engine.embed(model, [text]) for text in texts))
    assert batcher.batches - before < 16 / 4  # sixteen requests, a few forward passes
    for single, batched in zip(alone, together[:2], strict=True):
        assert cosine(single, batched.vectors[0]) > 0.9999


async def test_tiny_lm_generates_chats_and_streams(
    registry: Registry, model_files: ModelFiles, local_services: Callable[..., Services]
) -> None:
    registry.register_files(model_files.tiny_lm_a, "lm")
    services = local_services()
    engine = services.engines["transformers"]
    model = await resolve(services, "transformers", "lm")
    out = await engine.generate(model, "the cat sat", SamplingParams(max_tokens=6))
    assert out.completion_tokens == 6
    assert out.finish_reason == "length"
    assert out.prompt_tokens and out.prompt_tokens > 0
    chat = await engine.chat(
        model, [ChatMessage("user", "hi")], SamplingParams(max_tokens=4, temperature=0.8, seed=1)
    )
    assert chat.completion_tokens == 4
    # A temperature so small that logits divided by it overflow decodes greedily (a 500).
    tiny = SamplingParams(max_tokens=4, temperature=1.175494351e-38, top_p=1e-05)
    greedy = SamplingParams(max_tokens=4)
    prompt = [ChatMessage("user", "hi")]
    assert (await engine.chat(model, prompt, tiny)).text == (
        await engine.chat(model, prompt, greedy)
    ).text
    pieces = [
        c async for c in engine.stream_generate(model, "the cat", SamplingParams(max_tokens=5))
    ]
    assert pieces[-1].done
    assert pieces[-1].final is not None
    assert "".join(p.text for p in pieces) == pieces[-1].final.text
    with pytest.raises(InvalidRequest) as refused:  # the template's ValueError was a 500
        await engine.chat(model, [], SamplingParams(max_tokens=4))
    assert refused.value.param == "messages"


async def test_a_stream_closed_early_frees_the_model(
    registry: Registry, model_files: ModelFiles, local_services: Callable[..., Services]
) -> None:
    registry.register_files(model_files.tiny_lm_a, "lm")
    services = local_services()
    engine = services.engines["transformers"]
    model = await resolve(services, "transformers", "lm")
    stream = engine.stream_generate(model, "the cat", SamplingParams(max_tokens=200))
    await anext(stream)
    await stream.aclose()
    (entry,) = services.pool.entries()
    loop = asyncio.get_running_loop()
    hung_up = loop.time()
    while entry.users or entry.extras["lock"].locked():
        assert loop.time() - hung_up < 1.0
        await asyncio.sleep(0.01)


async def test_classification_and_declared_pooling(
    registry: Registry, model_files: ModelFiles, local_services: Callable[..., Services]
) -> None:
    registry.register_files(model_files.tiny_classifier, "clf")
    registry.register_files(model_files.tiny_encoder, "enc")
    services = local_services()
    engine = services.engines["transformers"]
    labels = await engine.classify(await resolve(services, "transformers", "clf"), ["good", "bad"])
    assert len(labels) == 2
    assert {label.label for label in labels[0]} == {"negative", "positive"}
    assert math.isclose(sum(label.score for label in labels[0]), 1.0, rel_tol=1e-5)
    assert labels[0][0].score >= labels[0][1].score
    vectors = (
        await engine.embed(await resolve(services, "transformers", "enc"), ["a cat"])
    ).vectors
    assert len(vectors[0]) == 32
    assert math.isclose(sum(x * x for x in vectors[0]), 1.0, rel_tol=1e-4)
    with pytest.raises(ModelNotServable):
        await engine.generate(await resolve(services, "transformers", "enc"), "x", SamplingParams())


async def test_undeclared_modules_are_refused(
    registry: Registry,
    model_files: ModelFiles,
    local_services: Callable[..., Services],
    tmp_path: Path,
) -> None:
    folder = shutil.copytree(model_files.tiny_encoder, tmp_path / "dense")
    modules = json.loads((folder / "modules.json").read_text())
    modules.append(
        {"idx": 9, "name": "9", "path": "9_Dense", "type": "sentence_transformers.models.Dense"}
    )
    (folder / "modules.json").write_text(json.dumps(modules))
    registry.register_files(folder, "dense")
    services = local_services()
    from aiml.errors import ModelLoadFailed

    with pytest.raises((ModelNotServable, ModelLoadFailed), match="Dense"):
        await services.engines["transformers"].embed(
            await resolve(services, "transformers", "dense"), ["x"]
        )
    assert services.pool.entries() == []


async def test_generation_fits_the_models_context(
    registry: Registry, model_files: ModelFiles, local_services: Callable[..., Services]
) -> None:
    from aiml.errors import InvalidRequest

    registry.register_files(model_files.tiny_lm_a, "lm")  # 256 positions
    services = local_services()
    engine = services.engines["transformers"]
    model = await resolve(services, "transformers", "lm")
    with pytest.raises(InvalidRequest, match="context holds 256"):
        await engine.generate(model, "the cat sat " * 200, SamplingParams(max_tokens=4))
    out = await engine.generate(model, "the cat sat", SamplingParams(max_tokens=1000))
    assert out.finish_reason == "length"
    assert out.prompt_tokens is not None
    assert out.completion_tokens is not None
    assert out.prompt_tokens + out.completion_tokens == 256
