"""``/api`` with the official ``ollama`` client: registry names, versions and aliases."""

from __future__ import annotations

import base64
import math
import time
from collections.abc import Callable

import ollama as ol
import pytest

from tests.conftest import ModelFiles, Registry, RunningAiml, RunningOllama

CATS = [{"role": "user", "content": "Write one sentence about cats."}]


@pytest.fixture
def aiml(
    start_aiml: Callable[..., RunningAiml], registry: Registry, model_files: ModelFiles
) -> RunningAiml:
    registry.register("llama2-7b-chat", "llama2:7b", task="chat", alias="production")
    registry.register("llama2-7b-chat", "llama2:13b", task="chat")
    registry.register_files(model_files.smollm2, "smol", task="chat", alias="default")
    registry.register_files(model_files.minilm, "minilm")
    return start_aiml()


def test_chat_and_generate_over_registry_names_versions_and_aliases(aiml: RunningAiml) -> None:
    client = ol.Client(host=aiml.url)
    assert client.chat(model="llama2-7b-chat:production", messages=CATS).message.content == (
        "llama2:7b heard: Write one sentence about cats."
    )
    assert client.chat(model="llama2-7b-chat:1", messages=CATS).message.content.startswith(
        "llama2:7b"
    )
    assert client.chat(model="llama2-7b-chat", messages=CATS).message.content.startswith(
        "llama2:13b"
    )
    assert client.chat(model="llama2-7b-chat:latest", messages=CATS).message.content.startswith(
        "llama2:13b"
    )

    reply = client.chat(
        model="smol:default", messages=CATS, options={"temperature": 0, "num_predict": 40}
    )
    assert "cat" in reply.message.content.lower()
    assert reply.done_reason in {"stop", "length"}
    assert reply.prompt_eval_count and reply.prompt_eval_count > 5
    assert reply.eval_count and reply.eval_count <= 40
    assert reply.total_duration and reply.total_duration > 0

    completion = client.generate(
        model="smol", prompt="The capital of France is", options={"num_predict": 5}
    )
    assert completion.eval_count == 5
    assert completion.done_reason == "length"
    passthrough = client.generate(model="llama2:7b", prompt="not in the registry")  # Ollama's own
    assert passthrough.response == "llama2:7b heard: not in the registry"


def test_streaming_is_ndjson_with_ollamas_fields(aiml: RunningAiml) -> None:
    client = ol.Client(host=aiml.url)
    parts = list(
        client.chat(
            model="smol", messages=CATS, stream=True, options={"num_predict": 20, "temperature": 0}
        )
    )
    assert all(not p.done for p in parts[:-1])
    final = parts[-1]
    assert final.done
    assert final.eval_count and final.eval_count > 0
    assert final.eval_duration and final.eval_duration > 0
    streamed = "".join(p.message.content or "" for p in parts)
    whole = client.chat(model="smol", messages=CATS, options={"num_predict": 20, "temperature": 0})
    assert streamed == whole.message.content
    generated = "".join(
        p.response
        for p in client.generate(model="llama2-7b-chat:production", prompt="a b", stream=True)
    )
    assert generated == "llama2:7b heard: a b"


def test_embed_tags_show_ps_version(aiml: RunningAiml) -> None:
    client = ol.Client(host=aiml.url)
    vectors = client.embed(model="minilm", input=["cat", "kitten", "stock market"]).embeddings
    assert _cos(vectors[0], vectors[1]) > _cos(vectors[0], vectors[2])
    assert len(client.embeddings(model="minilm", prompt="cat").embedding) == 384
    names = {m.model for m in client.list().models}
    assert {
        "llama2-7b-chat:latest",
        "llama2-7b-chat:production",
        "smol:latest",
        "smol:default",
    } <= names
    shown = client.show("minilm")
    assert shown.capabilities == ["embedding"]
    running = {m.model for m in client.ps().models}
    assert "minilm:1" in running
    assert client._client.get("/api/version").json()["version"]


def test_errors_and_what_aiml_does_not_do(aiml: RunningAiml, ollama: RunningOllama) -> None:
    client = ol.Client(host=aiml.url)
    with pytest.raises(ol.ResponseError) as missing:
        client.chat(model="nobody:1b", messages=CATS)
    assert missing.value.status_code == 404
    with pytest.raises(ol.ResponseError) as alias:
        client.chat(model="smol:no-such-alias", messages=CATS)
    assert alias.value.status_code == 404
    with pytest.raises(ol.ResponseError) as bad_option:
        client.chat(model="smol", messages=CATS, options={"mirostat": 2})
    assert bad_option.value.status_code == 400
    assert "mirostat" in bad_option.value.error
    with pytest.raises(ol.ResponseError) as pull:
        client.pull("llama3")  # neither in the registry nor on the Ollama server
    assert pull.value.status_code == 404
    with pytest.raises(ol.ResponseError) as push:
        client.push("smol")
    assert push.value.status_code == 501
    ollama.state.fail_mid_stream = "runner crashed"
    with pytest.raises(ol.ResponseError, match="runner crashed"):
        for _ in client.chat(model="llama2-7b-chat", messages=CATS, stream=True):
            pass


def test_load_unload_and_images_as_ollama_does_them(
    aiml: RunningAiml, ollama: RunningOllama
) -> None:
    client = ol.Client(host=aiml.url)
    loaded = client.generate(model="smol", prompt="")
    assert loaded.done_reason == "load"
    assert any(m.model == "smol:1" for m in client.ps().models)
    unloaded = client.generate(model="smol", prompt="", keep_alive=0)
    assert unloaded.done_reason == "unload"
    assert not any(m.model == "smol:1" for m in client.ps().models)
    image = base64.b64encode(b"\x89PNG not really").decode()
    described = client.generate(model="qwen2:0.5b", prompt="what is it", images=[image])
    assert described.response.startswith("qwen2:0.5b heard: what is it")  # a vision model
    assert ollama.state.received[-1][1]["images"] == [image]


def test_a_client_hanging_up_frees_the_model(aiml: RunningAiml) -> None:
    client = ol.Client(host=aiml.url)
    parts = client.chat(model="smol", messages=CATS, stream=True, options={"num_predict": 1000})
    next(parts)
    parts.close()  # the generator's close ends the HTTP response
    hung_up = time.monotonic()
    with aiml.client() as http:
        while any(m["in_use"] for m in http.get("/inference/loaded").json()["models"]):
            assert time.monotonic() - hung_up < 1.0
            time.sleep(0.02)


def _cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
