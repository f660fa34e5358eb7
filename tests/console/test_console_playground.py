"""The console's playground and traffic pages in a real browser: a streamed chat and its
stop button, embeddings, file uploads for other tasks, charts that move, accessibility
(axe-core) and a phone's screen."""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunningAiml
from tests.console.conftest import (
    BROWSER_TESTS,
    STORY,
    USER_KEY,
    WIDE,
    api,
    keep,
    open_console,
    screenshot,
)
from tests.fakes.documents import text_image

pytestmark = BROWSER_TESTS
sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (dev extra)")
axe_sync = pytest.importorskip("axe_playwright_python.sync_playwright")
expect = sync_api.expect


def metric(aiml: RunningAiml, name: str) -> float:
    with api(aiml) as client:
        text = client.get("/metrics").text
    found = re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M)
    return sum(float(v) for v in found)


def test_a_chat_streams_into_the_page_and_stop_frees_the_model(
    browser: Any, aiml: RunningAiml, artifacts: Path
) -> None:
    cancelled_before = metric(aiml, "aiml_requests_cancelled_total")
    console = open_console(browser, aiml, "playground")
    page = console.page
    page.get_by_label("Model").select_option("smol")
    page.get_by_label("Max tokens").fill("1900")
    page.get_by_label("Message", exact=True).fill(STORY)
    page.get_by_role("button", name="Send").click()
    reply = page.locator("li.msg.assistant .content")
    # Tokens arrive (the first request loads the model)...
    expect(reply).to_have_text(re.compile(r"\S.{40,}", re.S), timeout=60_000)
    streaming = page.locator("li.msg.assistant[data-state=streaming]")
    expect(streaming).to_have_count(1)  # ...while the stream is still open
    partial = reply.text_content() or ""
    expect(reply).not_to_have_text(partial)  # and keep arriving
    screenshot(page, artifacts, "playground-chat")
    page.get_by_role("button", name="Stop").click()
    expect(page.locator("li.msg.assistant[data-state=stopped]")).to_have_count(1)
    # This aiml traces nothing: no thumbs under the answer, and the page says why.
    untraced = page.locator("li.msg.assistant [data-feedback=untraced]")
    expect(untraced).to_contain_text("Not traced")
    expect(page.get_by_role("button", name="Thumbs down")).to_have_count(0)
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    deadline = time.monotonic() + 10
    while metric(aiml, "aiml_requests_cancelled_total") <= cancelled_before or metric(
        aiml, "aiml_llamacpp_sequences_running"
    ):  # the hang-up reached the engine: counted as cancelled, no sequence left running
        assert time.monotonic() < deadline, "the generation was not cancelled"
        time.sleep(0.05)
    with api(aiml) as client:
        loaded = client.get("/inference/loaded").json()["models"]
    assert [m["in_use"] for m in loaded if m["registry_name"] == "smol"] == [0]
    page.get_by_text("Show as curl").click()  # the request, for a terminal
    expect(page.locator(".snippets pre").first).to_contain_text("/v1/chat/completions")
    expect(page.locator(".snippets pre").first).to_contain_text("$AIML_API_KEY")
    console.check()


def test_embeddings_show_a_similarity_matrix(
    browser: Any, aiml: RunningAiml, artifacts: Path
) -> None:
    console = open_console(browser, aiml, "playground")
    page = console.page
    page.get_by_role("button", name="Embeddings").click()
    page.get_by_label("Model").select_option("minilm")
    page.get_by_role("button", name="Embed", exact=True).click()
    table = page.get_by_role("table", name=re.compile("Cosine similarity of 3 texts"))
    expect(table).to_be_visible(timeout=60_000)
    cells = table.locator("tbody td")
    expect(cells).to_have_count(9)
    values = [float(v) for v in cells.all_text_contents()]
    assert values[0] == values[4] == values[8] == 1.0
    assert values[1] > values[2]  # cat ~ kitten more than cat ~ stock market
    page.get_by_text("Show as Python").click()
    expect(page.locator(".snippets pre").nth(1)).to_contain_text("client.embeddings.create(")
    screenshot(page, artifacts, "playground-embeddings")
    console.check()


def test_other_tasks_take_a_file_upload(browser: Any, aiml: RunningAiml, artifacts: Path) -> None:
    image = io.BytesIO()
    text_image(["Hello from the console"], font="DejaVuSans").save(image, format="PNG")
    console = open_console(browser, aiml, "playground")
    page = console.page
    page.get_by_role("button", name="Other tasks").click()
    page.get_by_label("Task", exact=True).select_option("ocr")
    expect(page.get_by_label("Engine")).to_have_value("onnx")  # the engines serving ocr
    page.get_by_label("Model", exact=True).fill("pp-ocrv4")
    page.get_by_label("Image").set_input_files(
        files=[{"name": "hello.png", "mimeType": "image/png", "buffer": image.getvalue()}]
    )
    page.get_by_role("button", name="Run").click()
    expect(page.locator("pre.result")).to_contain_text("Hello from the console", timeout=60_000)
    page.get_by_text("Show as curl").click()
    expect(page.locator(".snippets pre").first).to_contain_text("<base64 of hello.png>")
    screenshot(page, artifacts, "playground-ocr")
    console.check()


def test_the_traffic_charts_move_after_a_burst(
    browser: Any, aiml: RunningAiml, artifacts: Path
) -> None:
    console = open_console(browser, aiml, "traffic")
    page = console.page
    chart = page.locator("[data-chart=requests]")
    expect(chart).to_be_visible()
    started = time.time()  # the history's clock is the same wall clock
    with api(aiml, USER_KEY) as client:
        for n in range(30):
            body = {
                "task": "chat", "engine": "ollama",
                "model_name": "llama2-7b-chat" if n % 5 else "no-such-model",
                "data": {"messages": [{"role": "user", "content": "hi"}]},
            }  # fmt: skip
            client.post("/inference/infer", json=body)
    page.wait_for_function(  # a point after the burst shows it (the page polls every 5 s)
        """started => {
          const figure = document.querySelector("[data-chart=requests]");
          const line = figure?.querySelector("li[data-label='chat/ollama']");
          if (!line) return false;
          const t = JSON.parse(figure.dataset.t), values = JSON.parse(line.dataset.values);
          return t.some((at, i) => at >= started && values[i] > 0);
        }""",
        arg=started,
        timeout=15_000,
    )
    expect(chart.locator("canvas")).not_to_have_count(0)
    errors = page.locator("[data-chart=status] li[data-label='404']")
    expect(errors).to_have_count(1)
    expect(page.locator("[data-chart=latency] canvas")).not_to_have_count(0)
    screenshot(page, artifacts, "traffic")
    console.check()


def test_every_page_passes_axe_and_works_from_the_keyboard(
    browser: Any, aiml: RunningAiml, artifacts: Path
) -> None:
    axe = axe_sync.Axe()
    found: dict[str, Any] = {}
    key_form = open_console(browser, aiml, "models", key=None)
    key_form.page.get_by_label("API key").wait_for()
    found["key form"] = axe.run(key_form.page).response["violations"]
    key_form.check()
    console = open_console(browser, aiml, "models")
    page = console.page
    page.get_by_role("heading", name="llama2-7b-chat").wait_for()
    expect(page.locator("tr[data-version]").first).to_be_visible()
    found["models"] = axe.run(page).response["violations"]
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Models")).to_be_focused()
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")  # the Traffic link, from the keyboard
    expect(page.get_by_role("heading", name="Traffic", exact=True)).to_be_visible()
    expect(page.locator("[data-chart=requests]")).to_be_visible()
    found["traffic"] = axe.run(page).response["violations"]
    page.get_by_role("link", name="Playground").click()
    expect(page.get_by_label("Message", exact=True)).to_be_visible()
    found["playground"] = axe.run(page).response["violations"]
    summary = {
        where: [f"{v['id']}: {v['help']} ({len(v['nodes'])})" for v in violations]
        for where, violations in found.items()
    }
    keep(artifacts, "console-axe.json", json.dumps(summary, indent=2).encode())
    assert all(not v for v in summary.values()), summary
    console.check()


def test_on_a_phone_nothing_overflows_the_screen(
    browser: Any, aiml: RunningAiml, artifacts: Path
) -> None:
    for where in ("models", "traffic", "playground"):
        console = open_console(browser, aiml, where, viewport={"width": 390, "height": 844})
        page = console.page
        page.locator("main h1").wait_for()
        page.wait_for_load_state("networkidle")
        screenshot(page, artifacts, f"{where}-phone")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, (where, width, page.evaluate(WIDE))
        console.check()
