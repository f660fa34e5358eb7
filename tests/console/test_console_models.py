"""The console's shell and models page in a real browser: a cold load's size and time,
models with versions and aliases, keys and admin actions (alias moves, load, unload)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunningAiml
from tests.console.conftest import (
    ADMIN_KEY,
    BROWSER_TESTS,
    KEY_ITEM,
    MARKS,
    USER_KEY,
    api,
    keep,
    open_console,
    screenshot,
    served_by,
)

pytestmark = BROWSER_TESTS
sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (dev extra)")
expect = sync_api.expect


def test_a_cold_load_is_small_and_quick(browser: Any, aiml: RunningAiml, artifacts: Path) -> None:
    console = open_console(browser, aiml, "models", key=None)  # the key form, then the page
    page = console.page
    page.get_by_label("API key").fill(ADMIN_KEY)
    page.get_by_role("button", name="Use key").click()
    expect(page.get_by_text("Admin key")).to_be_visible()
    console.check()

    context = browser.new_context()
    context.add_init_script(f"sessionStorage.setItem({KEY_ITEM!r}, {ADMIN_KEY!r})")
    page = context.new_page()
    requests: list[Any] = []
    page.on("requestfinished", lambda request: requests.append(request))

    def transferred(assets: bool) -> dict[str, int]:
        sizes = {}
        for request in requests:
            if ("/ui" in request.url) == assets:
                size = request.sizes()
                sizes[request.url] = size["responseBodySize"] + size["responseHeadersSize"]
        return sizes

    started = time.perf_counter()
    page.goto(f"{aiml.url}/ui#/models")
    page.get_by_role("heading", name="Models", exact=True).wait_for()
    shell_s = time.perf_counter() - started
    page.get_by_role("heading", name="llama2-7b-chat").wait_for()
    expect(page.locator("[data-alias=prod]")).to_be_visible()
    listed_s = time.perf_counter() - started
    page.wait_for_function("() => performance.getEntriesByName('console:models-listed').length")
    marks = page.evaluate(MARKS)  # in the page's own clock, from the navigation's start
    cold_assets = transferred(assets=True)
    cold = sum(cold_assets.values())
    api_bytes = sum(transferred(assets=False).values())
    for request in requests:  # every script and style came compressed
        if re.search(r"\.(m?js|css)$", request.url):
            assert request.response().headers.get("content-encoding") == "gzip", request.url
    page.goto(f"{aiml.url}/ui#/traffic")  # uPlot is loaded on the traffic page only
    page.locator("[data-chart=requests]").wait_for()
    page.wait_for_load_state("networkidle")
    with_charts = sum(transferred(assets=True).values())
    report = {
        "assets": {url.rsplit("/", 1)[-1]: size for url, size in cold_assets.items()},
        "cold_load_bytes": cold,
        "with_traffic_page_bytes": with_charts,
        "api_bytes": api_bytes,
        "shell_rendered_s": round(shell_s, 3),
        "models_listed_s": round(listed_s, 3),
        "dom_content_loaded_ms": round(marks["dom_content_loaded"]),
        "interactive_ms": round(marks["console:interactive"]),
        "models_listed_ms": round(marks["console:models-listed"]),
    }
    keep(artifacts, "console-load.json", json.dumps(report, indent=2).encode())
    print(json.dumps(report, indent=2))
    assert cold < 200_000 and with_charts < 200_000
    # The goal is interactive within 1 s on loopback; a busy 2-core CI box gets some slack.
    assert report["interactive_ms"] < 1500
    context.close()


def test_the_models_page_lists_models_versions_and_aliases(
    browser: Any, aiml: RunningAiml, artifacts: Path
) -> None:
    console = open_console(browser, aiml, "models")
    page = console.page
    for name in ("smol", "minilm", "llama2-7b-chat"):
        expect(page.get_by_role("heading", name=name, exact=True)).to_be_visible()
    llama = page.locator("section.model", has=page.get_by_role("heading", name="llama2-7b-chat"))
    expect(llama.locator("[data-alias=prod]")).to_have_text("@prod → v1")
    expect(llama.locator("tr[data-version='1']")).to_contain_text("llama2:7b")
    expect(llama.locator("tr[data-version='2']")).to_contain_text("llama2:13b")
    smol = page.locator("section.model", has=page.get_by_role("heading", name="smol"))
    expect(smol.locator("tr[data-version='1']")).to_contain_text("llamacpp")
    expect(smol.locator("tr[data-version='1']")).to_contain_text(".gguf")
    expect(page.get_by_role("button", name="Clear resolution cache")).to_be_visible()
    page.get_by_role("button", name="Clear resolution cache").click()
    expect(page.get_by_text("Resolution cache cleared")).to_be_visible()
    screenshot(page, artifacts, "models")
    console.check()


def test_a_user_key_sees_no_admin_action_and_a_wrong_key_is_refused(
    browser: Any, aiml: RunningAiml
) -> None:
    console = open_console(browser, aiml, "models", key="wrong")
    page = console.page
    expect(page.get_by_text("That key is not valid.")).to_be_visible()
    page.get_by_label("API key").fill(USER_KEY)
    page.get_by_role("button", name="Use key").click()
    expect(page.get_by_text("User key")).to_be_visible()
    expect(page.get_by_role("heading", name="llama2-7b-chat")).to_be_visible()
    expect(page.locator("tr[data-version]").first).to_be_visible()
    for admin_only in ("Load", "Unload", "Point alias…", "Clear resolution cache"):
        expect(page.get_by_role("button", name=admin_only)).to_have_count(0)
    assert page.evaluate(f"sessionStorage.getItem({KEY_ITEM!r})") == USER_KEY
    assert page.evaluate("localStorage.length") == 0
    assert page.context.cookies() == []
    page.get_by_role("button", name="Forget key").click()
    expect(page.get_by_label("API key")).to_be_visible()
    assert page.evaluate(f"sessionStorage.getItem({KEY_ITEM!r})") is None
    console.check()


def test_moving_an_alias_in_the_console_changes_what_infer_serves(
    browser: Any, aiml: RunningAiml, artifacts: Path
) -> None:
    assert served_by(aiml, "llama2-7b-chat@prod") == "llama2:7b"
    console = open_console(browser, aiml, "models")
    page = console.page
    llama = page.locator("section.model", has=page.get_by_role("heading", name="llama2-7b-chat"))
    llama.get_by_label("Alias").fill("prod")
    llama.get_by_label("Version").select_option("2")
    llama.get_by_role("button", name="Point alias…").click()
    dialog = page.get_by_role("dialog", name="Move an alias")
    expect(dialog).to_be_visible()
    expect(dialog.locator(".change")).to_have_text("llama2-7b-chat@prod: version 1 → version 2")
    screenshot(page, artifacts, "models-alias-confirm")
    page.keyboard.press("Escape")  # cancelling changes nothing
    expect(dialog).to_be_hidden()
    assert served_by(aiml, "llama2-7b-chat@prod") == "llama2:7b"
    llama.get_by_role("button", name="Point alias…").click()
    dialog.get_by_role("button", name="Move alias").click()
    expect(llama.get_by_text("now points at version 2")).to_be_visible()
    expect(llama.locator("[data-alias=prod]")).to_have_text("@prod → v2")
    assert served_by(aiml, "llama2-7b-chat@prod") == "llama2:13b"
    with api(aiml) as client:  # put it back for the other tests
        client.put("/models/registered_in_mlflow/llama2-7b-chat/aliases/prod", json={"version": 1})
    console.check()


def test_an_admin_loads_and_unloads_a_model_from_the_console(
    browser: Any, aiml: RunningAiml
) -> None:
    console = open_console(browser, aiml, "models")
    page = console.page
    page.get_by_role("button", name="Load smol/1").click()
    expect(page.get_by_text("Loaded smol/1.")).to_be_visible(timeout=60_000)
    row = page.locator("table.loaded tr[data-model='smol/1']")
    expect(row).to_be_visible()
    expect(row.locator(".in-use")).to_have_text("0")
    with api(aiml) as client:
        loaded = client.get("/inference/loaded").json()["models"]
    assert [(m["engine"], m["registry_name"]) for m in loaded] == [("llamacpp", "smol")]
    row.get_by_role("button", name="Unload smol/1").click()
    expect(page.get_by_text("Unloaded smol/1.")).to_be_visible()
    expect(row).to_have_count(0)
    with api(aiml) as client:
        assert client.get("/inference/loaded").json()["models"] == []
    console.check()
