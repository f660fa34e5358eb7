"""The ``aiml`` command line, on the same registry and stand-in as the service."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from typer.testing import CliRunner

from aiml.cli import app
from tests.conftest import ModelFiles, Registry, RunningAiml, RunningOllama

runner = CliRunner()


@pytest.fixture(autouse=True)
def environment(
    monkeypatch: pytest.MonkeyPatch, registry: Registry, ollama: RunningOllama, tmp_path: object
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.uri)
    monkeypatch.setenv("OLLAMA_HOST", ollama.url)
    monkeypatch.setenv("AIML_HOME", str(tmp_path))


@pytest.mark.parametrize(
    "command",
    [[], ["serve"], ["infer"], ["models"], ["register-ollama"], ["alias"], ["alias", "set"]],
)
def test_every_command_has_help(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output


def test_register_list_and_alias(registry: Registry) -> None:
    result = runner.invoke(
        app, ["register-ollama", "llama2:7b", "llama2-7b-chat", "--alias", "staging"]
    )
    assert result.exit_code == 0, result.output
    assert "llama2-7b-chat version 1 (@staging) -> llama2:7b" in result.output
    runner.invoke(app, ["register-ollama", "llama2:13b", "llama2-7b-chat"])

    assert runner.invoke(app, ["alias", "set", "llama2-7b-chat", "production", "2"]).exit_code == 0
    assert (
        int(registry.client.get_model_version_by_alias("llama2-7b-chat", "production").version) == 2
    )
    listing = runner.invoke(app, ["models"])
    assert "llama2-7b-chat" in listing.output
    detail = runner.invoke(app, ["models", "llama2-7b-chat"])
    assert "ollama_model_name=llama2:13b" in detail.output
    assert runner.invoke(app, ["alias", "delete", "llama2-7b-chat", "staging"]).exit_code == 0

    missing = runner.invoke(app, ["register-ollama", "llama2", "x"])
    assert missing.exit_code == 1
    assert "404 model_not_found" in missing.output


def test_infer_against_a_running_service(
    start_aiml: Callable[..., RunningAiml], registry: Registry
) -> None:
    registry.register("llama2-7b-chat", "llama2:7b")
    aiml = start_aiml()
    result = runner.invoke(
        app,
        ["infer", "llama2-7b-chat", "why is the sky blue", "--url", aiml.url, "-o", "max_tokens=4"],
    )
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "llama2:7b heard: why is"
    chat = runner.invoke(
        app, ["infer", "llama2-7b-chat", "hi", "--task", "chat", "--url", aiml.url]
    )
    assert chat.output.strip() == "llama2:7b heard: hi"
    failed = runner.invoke(app, ["infer", "nope", "hi", "--url", aiml.url])
    assert failed.exit_code == 1
    assert "404" in failed.output


def test_register_files_with_progress_and_idempotence(model_files: ModelFiles) -> None:
    first = runner.invoke(app, ["register", str(model_files.tiny_lm_a), "lm", "--alias", "prod"])
    assert first.exit_code == 0, first.output
    assert "hashing" in first.output
    assert "uploading" in first.output
    assert "registered lm version 1 (@prod)" in first.output
    again = runner.invoke(app, ["register", str(model_files.tiny_lm_a), "lm"])
    assert "already registered as lm version 1" in again.output
    forced = runner.invoke(app, ["register", str(model_files.tiny_lm_a), "lm", "--force"])
    assert "registered lm version 2" in forced.output


def test_quickstart_registers_the_bundled_models_once(registry: Registry) -> None:
    first = runner.invoke(app, ["quickstart", "--no-serve"])
    assert first.exit_code == 0, first.output
    names = ("smollm2-135m-instruct", "gemma3-270m", "all-minilm-l6-v2", "whisper-tiny-en",
             "silero-vad", "pp-ocrv4")  # fmt: skip
    for name in names:
        assert f"registered {name} version 1 (@default)" in first.output
    assert "curl -s http://127.0.0.1:8000/inference/infer" in first.output
    second = runner.invoke(app, ["quickstart", "--no-serve"])
    assert second.output.count("already registered as") == len(names)
    assert len(registry.client.search_model_versions("name='gemma3-270m'")) == 1
