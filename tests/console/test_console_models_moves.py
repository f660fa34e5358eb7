"""The console's alias move when aiml refuses it (409 unsafe_alias_move): what the version
lacks is listed, and an admin may move it anyway."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from tests.conftest import RunningAiml
from tests.console.conftest import BROWSER_TESTS, open_console, screenshot

pytestmark = BROWSER_TESTS
sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (dev extra)")
expect = sync_api.expect


def test_a_refused_move_lists_what_is_missing_and_can_be_forced(
    browser: Any, aiml: RunningAiml, artifacts: Path
) -> None:
    uri = aiml.services.settings.registry_uri
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("switched")
    for ollama_model, task in (("llama2:7b", "chat"), ("nomic-embed-text:latest", "embeddings")):
        tags = {"ollama_model_name": ollama_model, "inference_engine": "ollama",
                "inference_task": task}  # fmt: skip
        client.create_model_version("switched", source="unused", tags=tags)
    client.set_registered_model_alias("switched", "live", "1")

    console = open_console(browser, aiml, "models")
    page = console.page
    card = page.locator("section.model", has=page.get_by_role("heading", name="switched"))
    card.get_by_label("Alias").fill("live")
    card.get_by_label("Version").select_option("2")
    card.get_by_role("button", name="Point alias…").click()
    page.get_by_role("dialog", name="Move an alias").get_by_role(
        "button", name="Move alias"
    ).click()
    refused = page.get_by_role("dialog", name="Move the alias anyway?")
    expect(refused).to_be_visible()
    expect(refused.locator("li[data-kind=capability]").first).to_be_visible()
    expect(refused.get_by_text("no chat template")).to_be_visible()
    expect(card.get_by_role("alert")).to_contain_text("409")
    screenshot(page, artifacts, "models-alias-refused")
    assert int(client.get_model_version_by_alias("switched", "live").version) == 1

    refused.get_by_role("button", name="Move anyway").click()
    expect(card.get_by_text("now points at version 2")).to_be_visible()
    expect(card.locator("[data-alias=live]")).to_have_text("@live → v2")
    assert int(client.get_model_version_by_alias("switched", "live").version) == 2
    # The browser logs the refusal's 409 as a failed load: the one error this page expects.
    console.problems[:] = [p for p in console.problems if "status of 409" not in p]
    console.check()
