"""Ollama's model routes on registry names, through the official ``ollama`` client: ``pull``
fetches and verifies a version's files (streaming progress), ``show`` reads the GGUF's own
metadata, ``ps`` lists what is loaded; pulling on the Ollama engine only where allowed."""

from __future__ import annotations

import shutil
from collections.abc import Callable

import ollama as ol
import pytest

from tests.conftest import ModelFiles, Registry, RunningAiml, RunningOllama

pytestmark = pytest.mark.slow


@pytest.fixture
def registered(registry: Registry, model_files: ModelFiles) -> Registry:
    registry.register_files(model_files.smollm2, "smol", task="chat")
    registry.register("llama2-7b-chat", "llama2:7b", task="chat")
    return registry


def test_pull_fetches_and_verifies_the_files(
    start_aiml: Callable[..., RunningAiml], registered: Registry, model_files: ModelFiles
) -> None:
    aiml = start_aiml()
    client = ol.Client(host=aiml.url)
    cache = aiml.services.settings.model_cache_dir
    shutil.rmtree(cache, ignore_errors=True)  # resolving may have fetched them already
    lines = list(client.pull("smol", stream=True))
    statuses = [line.status for line in lines]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert "verifying sha256 digest" in statuses
    sized = next(line for line in lines if line.total)
    assert sized.total == sized.completed  # the GGUF and the version's manifest
    assert (sized.total or 0) >= model_files.smollm2.stat().st_size
    assert any(path.name == model_files.smollm2.name for path in cache.rglob("*.gguf"))
    assert client.pull("smol:1").status == "success"  # not streamed: the last line


def test_show_reads_the_gguf_and_ps_lists_the_loaded(
    start_aiml: Callable[..., RunningAiml], registered: Registry
) -> None:
    client = ol.Client(host=start_aiml().url)
    shown = client.show("smol")
    assert shown.details.family == "llama" and shown.details.format == "gguf"
    assert shown.details.quantization_level == "Q4_1"
    assert shown.details.parameter_size  # the GGUF's size label
    assert shown.modelinfo["llama.context_length"] == 8192
    assert "<|im_start|>" in (shown.template or "")
    assert set(shown.capabilities or ()) == {"completion", "tools"}  # no FIM tokens
    client.chat(model="smol", messages=[{"role": "user", "content": "hi"}],
                options={"num_predict": 2})  # fmt: skip
    (loaded,) = client.ps().models
    assert loaded.model == "smol:1" and (loaded.size or 0) > 90_000_000
    assert loaded.expires_at is not None


def test_pull_on_the_ollama_engine_only_where_allowed(
    start_aiml: Callable[..., RunningAiml], registered: Registry, ollama: RunningOllama
) -> None:
    refusing = ol.Client(host=start_aiml().url)
    with pytest.raises(ol.ResponseError) as refused:
        refusing.pull("llama2-7b-chat")
    assert refused.value.status_code == 403 and "AIML_OLLAMA_ALLOW_PULL" in refused.value.error
    ollama.state.pullable.add("llama2:7b")  # the stand-in's registry has it
    allowing = ol.Client(host=start_aiml(ollama_allow_pull=True).url)
    assert [line.status for line in allowing.pull("llama2-7b-chat", stream=True)][-1] == "success"
    assert ollama.state.received[-1][0] == "POST /api/pull"
