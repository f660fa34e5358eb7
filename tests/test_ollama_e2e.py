"""The Ollama engine end to end against a second aiml serving real models through /api.

Real tokens cross the Ollama protocol both ways: aiml (A) uses its Ollama engine, on the
official ollama client, to call aiml (B), whose Ollama-compatible /api serves SmolLM2 with
llama.cpp and MiniLM with transformers.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import pytest

from tests.conftest import ModelFiles, Registry, RunningAiml
from tests.fakes.processes import Process, aiml_serve

pytestmark = pytest.mark.slow


@pytest.fixture
def second_aiml(tmp_path: Path, model_files: ModelFiles) -> Iterator[Process]:
    env = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'b' / 'registry.db'}",
        "AIML_ENGINES": "llamacpp,transformers",
    }
    (tmp_path / "b").mkdir()
    for path, name, task in (
        (model_files.smollm2, "smol", "chat"),
        (model_files.minilm, "minilm", "embeddings"),
    ):
        subprocess.run(
            [sys.executable, "-m", "aiml", "register", str(path), name, "--task", task],
            env={**os.environ, **env, "AIML_HOME": str(tmp_path / "b" / "home")},
            check=True, capture_output=True,
        )  # fmt: skip
    server = aiml_serve(tmp_path / "b", env)
    server.start()
    yield server
    server.stop()


def test_real_tokens_cross_the_ollama_protocol(
    second_aiml: Process, start_aiml: Callable[..., RunningAiml], registry: Registry
) -> None:
    b_url = second_aiml.health_url.removesuffix("/health/live")
    registry.register("assistant", "smol", task="chat", alias="prod")  # B's smol:latest
    registry.register("embedder", "minilm", task="embeddings")
    aiml = start_aiml(ollama_host=b_url, engines="ollama", ollama_timeout_s=60.0)

    reply = aiml.infer("assistant@prod", task="chat", options={"max_tokens": 30, "temperature": 0})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["resolved"]["engine_model"] == "smol:latest"
    text = body["result"]["message"]["content"]
    assert len(text.split()) >= 3, text
    assert (
        body["result"]["metadata"]["completion_tokens"] > 0
    )  # B's counts, through Ollama's fields

    api = openai.OpenAI(base_url=f"{aiml.url}/v1", api_key="x", max_retries=0)
    stream = api.chat.completions.create(
        model="assistant@prod", messages=[{"role": "user", "content": "Name a colour."}],
        max_tokens=20, stream=True,
    )  # fmt: skip
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len([p for p in pieces if p]) > 1  # streamed token by token across both hops

    vectors = aiml.infer("embedder", task="embeddings", data={"inputs": ["cat", "kitten"]})
    assert vectors.status_code == 200, vectors.text
    assert len(vectors.json()["result"]["embeddings"][0]) == 384
