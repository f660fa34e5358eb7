"""Safe alias moves: aiml moves an alias only to a version that serves what it serves now.

On the shared aiml, one registered model ``moves`` holds SmolLM2 (v1, a chat model), a copy
of it whose GGUF has no chat template (v2, ``gguf-new-metadata --remove-metadata``, the
``gguf`` package's own tool), an embeddings model on the Ollama stand-in (v3) and a GGUF
whose stored file is corrupted after registration (v4). Each move is checked as serving
would check it (files fetched and verified, the GGUF's metadata read), never by loading.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from aiml.cli import app
from tests.conftest import ModelFiles, Shared

NAME = "moves"


@dataclass(frozen=True)
class Versions:
    chat: int  # SmolLM2
    no_template: int  # SmolLM2 without its chat template
    embeddings: int  # another task, on another engine
    broken: int  # files that fail verification


@pytest.fixture(scope="module")
def versions(
    shared: Shared, model_files: ModelFiles, tmp_path_factory: pytest.TempPathFactory
) -> Versions:
    folder = tmp_path_factory.mktemp("alias-moves")
    plain = folder / "smollm2-no-template.gguf"
    subprocess.run(
        [sys.executable, "-m", "gguf.scripts.gguf_new_metadata", "--remove-metadata",
         "tokenizer.chat_template", "--force", str(model_files.smollm2), str(plain)],
        check=True, capture_output=True,
    )  # fmt: skip
    registry = shared.registry
    chat = registry.register_files(model_files.smollm2, NAME, task="chat").version.version
    no_template = registry.register_files(plain, NAME, task="chat").version.version
    embeddings = registry.register(NAME, "nomic-embed-text:latest", task="embeddings")
    small = _small_gguf(folder / "broken.gguf")
    broken = registry.register_files(small, NAME, task="chat").version.version
    stored = list(registry.artifacts.rglob("broken.gguf"))
    assert stored
    for path in stored:  # same size, other bytes: only the sha256 check can tell
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
    registry.client.set_registered_model_alias(NAME, "production", str(chat))
    return Versions(chat, no_template, embeddings, broken)


def _small_gguf(path: Path) -> Path:
    """A GGUF of metadata and one tiny tensor: files to register, never served."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("x", np.zeros(32, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _move(shared: Shared, alias: str, version: int, **params: Any) -> httpx.Response:
    return httpx.put(
        f"{shared.aiml.url}/models/registered_in_mlflow/{NAME}/aliases/{alias}",
        json={"version": version},
        params=params,
        timeout=60,
    )


def _points_at(shared: Shared, alias: str) -> int:
    return int(shared.registry.client.get_model_version_by_alias(NAME, alias).version)


def _missing(answer: httpx.Response) -> set[tuple[str, str]]:
    assert answer.status_code == 409, answer.text
    error = answer.json()["error"]
    assert error["code"] == "unsafe_alias_move"
    assert error["param"] == "version"
    return {(item["kind"], item["name"]) for item in error["missing"]}


def test_a_move_to_a_version_without_a_chat_template_is_refused(
    shared: Shared, versions: Versions
) -> None:
    refused = _move(shared, "production", versions.no_template)
    assert _missing(refused) == {("capability", "chat"), ("capability", "tools")}
    message = refused.json()["error"]["message"]
    assert "chat template" in message and "tool calling" in message
    assert f"{NAME}@production was not moved" in message
    assert _points_at(shared, "production") == versions.chat  # nothing changed


def test_force_moves_it_and_a_move_back_to_more_is_safe(shared: Shared, versions: Versions) -> None:
    shared.registry.client.set_registered_model_alias(NAME, "forced", str(versions.chat))
    forced = _move(shared, "forced", versions.no_template, force="true")
    assert forced.status_code == 200, forced.text
    assert _points_at(shared, "forced") == versions.no_template
    # The chat model has all the template-less one has, and more: a compatible move.
    back = _move(shared, "forced", versions.chat)
    assert back.status_code == 200, back.text
    assert _points_at(shared, "forced") == versions.chat


def test_a_move_to_a_version_of_another_task_is_refused(shared: Shared, versions: Versions) -> None:
    missing = _missing(_move(shared, "production", versions.embeddings))
    assert {("task", "chat"), ("task", "text-generation"), ("engine", "llamacpp")} <= missing
    assert ("capability", "chat") in missing
    assert _points_at(shared, "production") == versions.chat


def test_a_move_to_files_that_fail_verification_is_refused(
    shared: Shared, versions: Versions
) -> None:
    refused = _move(shared, "production", versions.broken)
    assert _missing(refused) == {("files", "llamacpp")}
    assert "does not match its sha256" in refused.json()["error"]["message"]
    assert _points_at(shared, "production") == versions.chat
    # A new alias needs only a version that can serve at all: this one cannot.
    assert _missing(_move(shared, "fresh", versions.broken)) == {("files", "llamacpp")}
    assert _move(shared, "fresh", versions.no_template).status_code == 200


def test_a_missing_version_is_still_a_404(shared: Shared, versions: Versions) -> None:
    assert _move(shared, "production", 99).status_code == 404


def test_the_cli_refuses_and_force_moves(
    shared: Shared, versions: Versions, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = shared.aiml.services.settings
    monkeypatch.setenv("MLFLOW_TRACKING_URI", shared.registry.uri)
    monkeypatch.setenv("OLLAMA_HOST", shared.ollama.url)
    monkeypatch.setenv("AIML_HOME", str(settings.home_dir))  # its verified files, shared
    monkeypatch.setenv("AIML_ENGINES", "llamacpp,ollama")
    runner = CliRunner()
    shared.registry.client.set_registered_model_alias(NAME, "cli", str(versions.chat))
    move = ["alias", "set", NAME, "cli", str(versions.no_template)]
    refused = runner.invoke(app, move)
    assert refused.exit_code == 1
    said = " ".join(refused.output.split())  # as one line, however rich wrapped it
    assert "409 unsafe_alias_move" in said and "chat template" in said
    assert _points_at(shared, "cli") == versions.chat
    forced = runner.invoke(app, [*move, "--force"])
    assert forced.exit_code == 0, forced.output
    assert _points_at(shared, "cli") == versions.no_template


def test_a_move_to_embeddings_of_another_size_is_refused(
    shared: Shared, model_files: ModelFiles
) -> None:
    registry = shared.registry
    name = "widths"
    minilm = registry.register_files(model_files.minilm, name, task="embeddings").version.version
    tiny = registry.register_files(model_files.tiny_encoder, name, task="embeddings")
    registry.client.set_registered_model_alias(name, "production", str(minilm))
    refused = httpx.put(
        f"{shared.aiml.url}/models/registered_in_mlflow/{name}/aliases/production",
        json={"version": tiny.version.version},
        timeout=60,
    )
    assert refused.status_code == 409, refused.text
    missing = {item["name"]: item["reason"] for item in refused.json()["error"]["missing"]}
    assert "384 dimensions" in missing["embedding dimensions"]
    assert "32 dimensions" in missing["embedding dimensions"]
    assert str(registry.client.get_model_version_by_alias(name, "production").version) == str(
        minilm
    )
