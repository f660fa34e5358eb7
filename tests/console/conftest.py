"""The console's browser tests share one aiml (with keys) and one chromium: Playwright on
Debian's ``chromium`` (it cannot download its own browser here), against the bundled
models: SmolLM2 on llama.cpp, a Llama 2 on the Ollama stand-in (two versions, an alias),
MiniLM for embeddings, PP-OCRv4. A screenshot of each page is kept (``AIML_TEST_ARTIFACTS``
names a folder to copy them and the load measurements to)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from aiml.bundled import BUNDLED
from tests.conftest import (
    ModelFiles,
    RunningAiml,
    RunningOllama,
    fresh_sqlite_registry,
    launch_aiml,
    standard_stand_in,
)
from tests.fakes.servers import ServerThread

CHROMIUM = shutil.which("chromium")
#: For the browser tests' modules: slow, and skipped without the browser.
BROWSER_TESTS = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)"
    ),
]

USER_KEY, ADMIN_KEY = "console-user-key", "console-admin-key"
KEY_ITEM = "aiml.console.key"
STORY = "Write a very long story about cats."
#: The console's performance marks and DOMContentLoaded, in ms since navigation started.
MARKS = """() => ({
  ...Object.fromEntries(performance.getEntriesByType("mark").map((m) => [m.name, m.startTime])),
  dom_content_loaded: performance.getEntriesByType("navigation")[0].domContentLoadedEventEnd,
})"""
#: The elements that stick out of the screen's width (for a failure's message).
WIDE = """() => [...document.querySelectorAll("body *")]
  .filter((e) => e.getBoundingClientRect().right > innerWidth + 1)
  .filter((e) => e.parentElement.getBoundingClientRect().right <= innerWidth + 1)
  .slice(0, 8).map((e) => `${e.tagName}.${e.className} ${e.getBoundingClientRect().right}`)"""


@pytest.fixture(scope="package")
def aiml(
    tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path, model_files: ModelFiles
) -> Iterator[RunningAiml]:
    folder = tmp_path_factory.mktemp("console-aiml")
    registry = fresh_sqlite_registry(folder, sqlite_template)
    registry.register_files(model_files.smollm2, "smol", task="chat")
    registry.register_files(model_files.minilm, "minilm", task="embeddings")
    registry.register("llama2-7b-chat", "llama2:7b", task="chat", alias="prod")
    registry.register("llama2-7b-chat", "llama2:13b", task="chat")
    ocr = next(model for model in BUNDLED if model.registered_name == "pp-ocrv4")
    registry.register_files(ocr.locate(folder / "bundled"), "pp-ocrv4")
    state = standard_stand_in()
    stand_in = ServerThread(state.app(), lifespan="off").start()
    running = launch_aiml(
        folder,
        registry,
        RunningOllama(state, stand_in),
        api_keys=USER_KEY,
        admin_keys=ADMIN_KEY,
    )
    yield running
    running.server.stop()
    stand_in.stop()


@pytest.fixture(scope="module")  # not longer: Playwright's sync API holds an event loop
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (dev extra)")
    with sync_api.sync_playwright() as playwright:
        # As root chromium needs --no-sandbox; Playwright cannot download its own browser here.
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="package")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("console-artifacts")


def keep(artifacts: Path, name: str, data: bytes) -> None:
    (artifacts / name).write_bytes(data)
    target = os.environ.get("AIML_TEST_ARTIFACTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(artifacts / name, Path(target) / name)


def screenshot(page: Any, artifacts: Path, name: str) -> None:
    keep(artifacts, f"console-{name}.png", page.screenshot(full_page=True))


@dataclass
class Console:
    page: Any
    problems: list[str] = field(default_factory=list)

    def note(self, message: Any) -> None:
        # A 401 is how the console learns that it needs a key; the browser logs it.
        if message.type == "error" and "status of 401" not in message.text:
            self.problems.append(f"console: {message.text}")

    def check(self) -> None:
        """No script error and no Content-Security-Policy violation on the page."""
        try:
            assert self.problems == []
        finally:
            self.page.context.close()


def open_console(
    browser: Any, aiml: RunningAiml, where: str = "models", *, key: str | None = ADMIN_KEY,
    viewport: dict[str, int] | None = None,
) -> Console:  # fmt: skip
    context = browser.new_context(viewport=viewport or {"width": 1280, "height": 900})
    if key is not None:  # as if typed into the key form earlier in this tab
        context.add_init_script(f"sessionStorage.setItem({KEY_ITEM!r}, {key!r})")
    page = context.new_page()
    console = Console(page)
    page.on("pageerror", lambda error: console.problems.append(f"page error: {error}"))
    page.on("console", console.note)
    page.goto(f"{aiml.url}/ui#/{where}")
    return console


def api(aiml: RunningAiml, key: str = ADMIN_KEY) -> httpx.Client:
    return httpx.Client(base_url=aiml.url, timeout=60, headers={"authorization": f"Bearer {key}"})


def served_by(aiml: RunningAiml, model: str) -> str:
    body = {
        "task": "chat", "engine": "ollama", "model_name": model,
        "data": {"messages": [{"role": "user", "content": "hi"}]},
    }  # fmt: skip
    with api(aiml, USER_KEY) as client:
        answer = client.post("/inference/infer", json=body)
    assert answer.status_code == 200, answer.text
    engine_model: str = answer.json()["resolved"]["engine_model"]
    return engine_model
