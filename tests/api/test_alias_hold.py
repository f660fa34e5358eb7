"""A move made in MLflow directly (``MlflowClient.set_registered_model_alias``) to a version
that cannot serve what the alias serves is kept off: the last good version serves on (every
response says so), ``/inference/stats``, ``/metrics`` and the log show the hold, and once the
alias names a version that can serve, that one serves and the hold ends. Short TTL, so each
move is read within a second; never a fixed wait, the tests poll until the state shows."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import ModelFiles, Registry, RunningAiml

HEADER = "x-aiml-model-version"
CHAT = [{"role": "user", "content": "hi there"}]


def _until(condition: Callable[[], Any], what: str, timeout_s: float = 30.0) -> Any:
    """Poll ``condition`` until it holds (the state changes in the background)."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(0.05)
    return value


def _chat(aiml: RunningAiml, model: str) -> str:
    """The version that served one short chat."""
    with aiml.client() as client:
        answer = client.post(
            "/v1/chat/completions", json={"model": model, "messages": CHAT, "max_tokens": 1}
        )
    assert answer.status_code == 200, answer.text
    return answer.headers[HEADER]


def _holds(aiml: RunningAiml) -> dict[str, Any]:
    with aiml.client() as client:
        held: dict[str, Any] = client.get("/inference/stats").json()["stats"]["held_aliases"]
    return held


def _metrics(aiml: RunningAiml) -> str:
    with aiml.client() as client:
        return client.get("/metrics").text


def _held_while_serving(aiml: RunningAiml, model: str, served: str) -> dict[str, Any]:
    """Requests until the hold of ``model`` shows; each one served by ``served``."""

    def shown() -> dict[str, Any] | None:
        assert _chat(aiml, model) == served  # never the refused version, not even once
        return _holds(aiml).get(model)

    hold: dict[str, Any] = _until(shown, f"{model} held")
    return hold


def test_a_move_in_mlflow_to_a_version_without_a_chat_template_is_kept_off(
    registry: Registry,
    model_files: ModelFiles,
    start_aiml: Callable[..., RunningAiml],
    tmp_path: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    plain = tmp_path / "smollm2-no-template.gguf"
    subprocess.run(
        [sys.executable, "-m", "gguf.scripts.gguf_new_metadata", "--remove-metadata",
         "tokenizer.chat_template", "--force", str(model_files.smollm2), str(plain)],
        check=True, capture_output=True,
    )  # fmt: skip
    registry.register_files(model_files.smollm2, "smol", task="chat")
    registry.register_files(plain, "smol", task="chat")
    registry.client.set_registered_model_alias("smol", "production", "1")
    aiml = start_aiml(resolve_ttl_s=1.0, engines="llamacpp")
    assert _chat(aiml, "smol@production") == "smol/1"
    caplog.set_level(logging.WARNING, logger="aiml.resolver")

    registry.client.set_registered_model_alias("smol", "production", "2")  # not through aiml
    hold = _held_while_serving(aiml, "smol@production", "smol/1")
    assert (hold["serving"], hold["refused"], hold["checked"]) == (1, 2, True)
    assert {(m["kind"], m["name"]) for m in hold["missing"]} == {
        ("capability", "chat"), ("capability", "tools")}  # fmt: skip
    infer = {"task": "chat", "engine": "llamacpp", "model_name": "smol@production",
             "data": {"messages": CHAT}, "options": {"max_tokens": 1}}  # fmt: skip
    with aiml.client() as client:
        answer = client.post("/inference/infer", json=infer)
    assert answer.status_code == 200, answer.text
    assert answer.json()["resolved"]["registry_version"] == 1
    assert answer.headers[HEADER] == "smol/1"
    metrics = _metrics(aiml)
    assert ('aiml_alias_held{checked="true",model_alias="smol@production",'
            'refused_version="2",serving_version="1"} 1.0') in metrics  # fmt: skip
    assert "aiml_alias_move_refusals_total 1.0" in metrics
    said = [r.getMessage() for r in caplog.records if r.name == "aiml.resolver"]
    assert len(said) == 1, said  # once, however many requests and lookups met the hold
    assert "smol@production now names version 2" in said[0] and "chat template" in said[0]

    registry.client.set_registered_model_alias("smol", "production", "1")  # fixed: moved back
    # The alias is read again at its next lookup: a request's, once its TTL is past.
    _until(lambda: _chat(aiml, "smol@production") == "smol/1" and not _holds(aiml), "no hold")
    assert "aiml_alias_held{" not in _metrics(aiml)


def test_a_move_to_another_tasks_version_is_held_and_a_good_one_serves(
    registry: Registry, start_aiml: Callable[..., RunningAiml]
) -> None:
    registry.register("chatty", "llama2:7b", task="chat", alias="production")
    registry.register("chatty", "nomic-embed-text:latest", task="embeddings")
    registry.register("chatty", "llama2:13b", task="chat")
    aiml = start_aiml(resolve_ttl_s=1.0)
    assert _chat(aiml, "chatty@production") == "chatty/1"

    registry.client.set_registered_model_alias("chatty", "production", "2")
    hold = _held_while_serving(aiml, "chatty@production", "chatty/1")
    kinds = {(m["kind"], m["name"]) for m in hold["missing"]}
    assert {("task", "chat"), ("capability", "chat")} <= kinds

    registry.client.set_registered_model_alias("chatty", "production", "3")
    _until(lambda: _chat(aiml, "chatty@production") == "chatty/3", "version 3 served")
    assert _holds(aiml) == {}
    metrics = _metrics(aiml)
    assert "aiml_alias_held{" not in metrics
    assert "aiml_alias_move_refusals_total 1.0" in metrics
