"""The console's record of served requests, in a real browser against a real ``mlflow
server`` (sqlite): a chat in the playground, its thumbs-down with a comment landing on its
trace in MLflow, the trace on the Models page with its feedback and a link that opens it in
MLflow's UI; with tracing off both pages say so."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from mlflow import MlflowClient
from mlflow.entities import Feedback

from tests.conftest import Registry, RunningAiml, RunningOllama, launch_aiml, standard_stand_in
from tests.console.conftest import ADMIN_KEY, BROWSER_TESTS, USER_KEY, api, open_console, screenshot
from tests.fakes.processes import Process, mlflow_server
from tests.fakes.servers import ServerThread

pytestmark = BROWSER_TESTS
sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (dev extra)")
expect = sync_api.expect

MODEL = "console-traced"
COMMENT = "it made that up"


@pytest.fixture(scope="module")
def mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowClient]:
    process: Process = mlflow_server(tmp_path_factory.mktemp("mlflow-console-traces"))
    process.start()
    yield MlflowClient(tracking_uri=process.health_url.removesuffix("/health"))
    process.stop()


@pytest.fixture(scope="module")
def aiml(tmp_path_factory: pytest.TempPathFactory, mlflow: MlflowClient) -> Iterator[RunningAiml]:
    """This module's own aiml: every request traced into the MLflow server above."""
    folder = tmp_path_factory.mktemp("console-traces-aiml")
    registry = Registry(uri=mlflow.tracking_uri, client=mlflow, artifacts=folder / "artifacts")
    state = standard_stand_in()
    stand_in = ServerThread(state.app(), lifespan="off").start()
    running = launch_aiml(
        folder, registry, RunningOllama(state, stand_in), trace_sample=1.0,
        trace_experiment="console-traces", api_keys=USER_KEY, admin_keys=ADMIN_KEY,
    )  # fmt: skip
    with api(running) as client:
        created = client.post("/models/register_ollama", json={
            "local_model_name": "llama2:7b", "registered_name": MODEL, "task": "chat",
            "alias": "production"})  # fmt: skip
    assert created.status_code == 201, created.text
    yield running
    running.server.stop()
    stand_in.stop()


def key_name(key: str) -> str:
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def test_feedback_from_the_playground_lands_on_the_trace_shown_on_the_models_page(
    browser: Any, aiml: RunningAiml, mlflow: MlflowClient, artifacts: Path
) -> None:
    console = open_console(browser, aiml, "playground", key=USER_KEY)
    page = console.page
    page.get_by_label("Model").select_option(f"{MODEL}@production")
    page.get_by_label("Message", exact=True).fill("Tell me about cats")
    page.get_by_role("button", name="Send").click()
    answer = page.locator("li.msg.assistant[data-state=done]")
    feedback = answer.locator(".answer-feedback[data-trace]")
    expect(feedback).to_have_count(1, timeout=30_000)
    trace_id = feedback.get_attribute("data-trace") or ""
    assert re.fullmatch(r"tr-[0-9a-f]{32}", trace_id), trace_id
    # The trace has reached MLflow (a cold MLflow server takes more than the 5 s the feedback
    # route waits for it, registry/feedback.py: then the feedback is a 404).
    assert aiml.services.traces is not None and aiml.services.traces.flush(timeout_s=60)
    feedback.get_by_label("Comment on this answer").fill(COMMENT)
    feedback.get_by_role("button", name="Thumbs down").click()
    recorded = feedback.get_by_role("status")
    expect(recorded).to_have_text(f"Feedback recorded on trace {trace_id}.", timeout=20_000)
    expect(feedback.get_by_role("button", name="Thumbs down")).to_have_attribute(
        "aria-pressed", "true"
    )
    screenshot(page, artifacts, "playground-feedback")

    # In MLflow, by MLflow's own API: the key's thumbs-down with its comment on that trace.
    [given] = [a for a in mlflow.get_trace(trace_id).info.assessments if isinstance(a, Feedback)]
    assert (given.name, given.value, given.rationale) == ("user_feedback", False, COMMENT)
    assert given.source.source_type == "HUMAN" and given.source.source_id == key_name(USER_KEY)

    # On the Models page: the version's traces, this one with its feedback and its link.
    page.get_by_role("link", name="Models").click()
    page.get_by_role("button", name=f"Traces of {MODEL}/1").click()
    panel = page.locator(f"section[data-traces='{MODEL}/1']")
    row = panel.locator(f"tr[data-trace='{trace_id}']")
    expect(row).to_be_visible()
    expect(panel).to_contain_text("Only this key's requests are shown.")
    expect(row).to_contain_text("OK (200)")
    expect(row).to_contain_text("Tell me about cats")  # the input's preview
    expect(row).to_contain_text(key_name(USER_KEY))
    expect(row).to_contain_text("@production, stable")
    expect(row.locator("li[data-value=false]")).to_contain_text(COMMENT)
    experiment = mlflow.get_experiment_by_name("console-traces")
    assert experiment is not None
    link = row.get_by_role("link", name=f"Trace {trace_id} in MLflow")
    url = link.get_attribute("href") or ""
    assert url.startswith(f"{mlflow.tracking_uri}/#/experiments/{experiment.experiment_id}/traces?")
    screenshot(page, artifacts, "models-traces")

    # The link opens the trace in MLflow's own UI.
    with page.context.expect_page() as opened:
        link.click()
    ui = opened.value
    # Its drawer names the trace by the first 8 hex digits of its id (MLflow 3.17).
    expect(ui.get_by_text(trace_id[3:11], exact=True)).to_be_visible(timeout=60_000)
    screenshot(ui, artifacts, "mlflow-trace")
    ui.close()
    console.check()


def test_with_tracing_off_the_pages_say_so(
    browser: Any, aiml: RunningAiml, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As an aiml that records no traces answers: no trace header, 404 on the trace routes.
    monkeypatch.setattr(aiml.services, "trace_records", None)
    monkeypatch.setattr(aiml.services, "feedback", None)
    console = open_console(browser, aiml, "models")
    page = console.page
    not_found: list[str] = []
    page.on("response", lambda r: not_found.append(urlsplit(r.url).path) if r.status == 404 else 0)
    page.get_by_role("button", name=f"Traces of {MODEL}/1").click()
    expect(page.locator("[data-tracing=off]")).to_contain_text("Tracing is off here")
    # Feedback refused (here the answer still names a trace): the error, under the answer.
    page.get_by_role("link", name="Playground").click()
    page.get_by_label("Model").select_option(f"{MODEL}@production")
    page.get_by_label("Message", exact=True).fill("hi")
    page.get_by_role("button", name="Send").click()
    feedback = page.locator("li.msg.assistant[data-state=done] .answer-feedback[data-trace]")
    feedback.get_by_role("button", name="Thumbs up").click()
    expect(feedback.get_by_role("alert")).to_contain_text("Tracing is off here")
    # The browser logs those two answers as errors; nothing else went wrong.
    assert not_found == ["/v1/traces", "/v1/feedback"]
    console.problems = [p for p in console.problems if "status of 404" not in p]
    console.check()
