"""The Models page says when an alias moved in MLflow is held at its last good version (the
version it names cannot serve), with what that version lacks, and stops once it is fixed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from tests.conftest import RunningAiml
from tests.console.conftest import BROWSER_TESTS, api, open_console, screenshot, served_by

pytestmark = BROWSER_TESTS
sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (dev extra)")
expect = sync_api.expect


def _reread(aiml: RunningAiml) -> None:
    """Drop the resolutions (the TTL is long here), so the next request reads the alias."""
    with api(aiml) as client:
        assert client.post("/inference/clear-cache").status_code == 200


def test_a_held_alias_is_shown_with_what_its_version_lacks(
    browser: Any, aiml: RunningAiml, artifacts: Path
) -> None:
    uri = aiml.services.settings.registry_uri
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("heldup")
    for ollama_model, task in (("llama2:7b", "chat"), ("nomic-embed-text:latest", "embeddings")):
        tags = {"ollama_model_name": ollama_model, "inference_engine": "ollama",
                "inference_task": task}  # fmt: skip
        client.create_model_version("heldup", source="unused", tags=tags)
    client.set_registered_model_alias("heldup", "live", "1")
    assert served_by(aiml, "heldup@live") == "llama2:7b"
    client.set_registered_model_alias("heldup", "live", "2")  # in MLflow, not through aiml
    _reread(aiml)
    assert served_by(aiml, "heldup@live") == "llama2:7b"  # held at version 1

    console = open_console(browser, aiml, "models")
    page = console.page
    note = page.locator("[data-held='heldup@live']")
    expect(note).to_be_visible()
    expect(note).to_contain_text("@live is held at v1")
    expect(note).to_contain_text("the registry names v2")
    expect(note).to_contain_text("chat template")
    screenshot(page, artifacts, "models-alias-held")

    client.set_registered_model_alias("heldup", "live", "1")  # fixed
    _reread(aiml)
    assert served_by(aiml, "heldup@live") == "llama2:7b"
    page.get_by_role("button", name="Refresh").click()
    expect(note).to_have_count(0, timeout=15_000)
    console.check()
