"""The console's rollouts page in a real browser: per alias its versions and weights, each
version's health side by side, shadow pairs; an admin starts a canary (a refused candidate
is listed and can be forced), reweighs it, promotes it and stops one; a user key sees no
action but sees the guard's trips; beside the controls, the canary's evaluation against the
alias's version (an ``aiml evaluate`` run) or the command that makes one; axe finds
nothing."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from aiml.registry.evaluation_records import experiment_name
from aiml.registry.evaluation_runs import Recorded, Side, log_evaluation
from tests.conftest import RunningAiml
from tests.console.conftest import (
    BROWSER_TESTS,
    USER_KEY,
    api,
    keep,
    open_console,
    screenshot,
)

pytestmark = BROWSER_TESTS
sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (dev extra)")
axe_sync = pytest.importorskip("axe_playwright_python.sync_playwright")
expect = sync_api.expect

MODEL, ALIAS = "rollout", "live"
CANARY = f"/models/registered_in_mlflow/{MODEL}/aliases/{ALIAS}/canary"


@pytest.fixture(scope="module")
def registry(aiml: RunningAiml) -> MlflowClient:
    """Versions 1 and 2 chat on the Ollama stand-in, 3 embeds (a candidate aiml refuses);
    the alias on 1, which declares a shadow: every request copied to version 2."""
    uri = aiml.services.settings.registry_uri
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(MODEL)
    for ollama_model, task in (
        ("llama2:7b", "chat"), ("llama2:13b", "chat"), ("nomic-embed-text:latest", "embeddings"),
    ):  # fmt: skip
        tags = {"ollama_model_name": ollama_model, "inference_engine": "ollama",
                "inference_task": task}  # fmt: skip
        client.create_model_version(MODEL, source="unused", tags=tags)
    client.set_registered_model_alias(MODEL, ALIAS, "1")
    client.set_model_version_tag(MODEL, "1", f"aiml.shadow.{ALIAS}", "2:100")
    return client


def chat_as_users(aiml: RunningAiml, users: int) -> Counter[str]:
    """A chat per user through the API; how many each version served."""
    served: Counter[str] = Counter()
    with api(aiml, USER_KEY) as client:
        for i in range(users):
            body = {"model": f"{MODEL}@{ALIAS}", "user": f"user-{i}",
                    "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
            answer = client.post("/v1/chat/completions", json=body)
            assert answer.status_code == 200, answer.text
            served[answer.headers["x-aiml-model-version"]] += 1
    return served


def test_an_admin_runs_a_canary_from_the_rollouts_page(
    browser: Any, aiml: RunningAiml, registry: MlflowClient, artifacts: Path
) -> None:
    console = open_console(browser, aiml, "rollouts")
    page = console.page
    card = page.locator(f"section[data-rollout='{MODEL}@{ALIAS}']")
    expect(card.locator("[data-canary]")).to_have_text("none")
    expect(card.locator("[data-shadow='2']")).to_contain_text("100 %")

    # A candidate that cannot serve the alias's chats: refused, listed, then forced.
    card.get_by_label("Candidate version").select_option("3")
    card.get_by_label("Weight (%)").fill("50")
    card.get_by_role("button", name="Start canary").click()
    refused = page.get_by_role("dialog", name="Start the canary anyway?")
    expect(refused.locator("li[data-kind]").first).to_be_visible()
    expect(card.get_by_role("alert")).to_contain_text("409")
    refused.get_by_role("button", name="Start anyway").click()
    expect(card.locator("[data-canary]")).to_have_text("version 3 at 50 %")
    # Then the right candidate, checked and accepted.
    card.get_by_label("Candidate version").select_option("2")
    card.get_by_role("button", name="Update canary").click()
    expect(card.locator("[data-canary]")).to_have_text("version 2 at 50 %")
    expect(card.locator(".split li[data-version='1']")).to_contain_text("50 % of the callers")
    with api(aiml) as client:
        assert client.get(CANARY).json()["canary"] == {"version": 2, "weight": 50, "plan": None}

    served = chat_as_users(aiml, 16)
    assert set(served) == {f"{MODEL}/1", f"{MODEL}/2"}, served  # sticky hashes: both sides
    page.get_by_role("button", name="Refresh").click()
    for version, count in served.items():
        cell = card.locator(f"td[data-version='{version}'][data-measure=requests]")
        expect(cell).to_have_text(str(count))
    p99 = card.locator(f"[data-chart$='-p99'] li[data-version='{MODEL}/2']")
    expect(p99).not_to_have_attribute("data-last", "")
    # The shadow copies run after each answer; the page's next reading shows them.
    pair = card.locator("tr.pair").first
    expect(pair).to_be_visible(timeout=15_000)
    # The stand-in names the model that answered: the two answers differ.
    expect(pair.locator("td.answer").first).to_have_text("llama2:7b heard: hi")
    expect(pair.locator("td.answer").nth(1)).to_have_text("llama2:13b heard: hi")
    expect(pair.locator("[data-match]")).to_have_text("differs")
    found = axe_sync.Axe().run(page).response["violations"]
    summary = [f"{v['id']}: {v['help']} ({len(v['nodes'])})" for v in found]
    keep(artifacts, "console-axe-rollouts.json", json.dumps(summary, indent=2).encode())
    assert summary == []
    screenshot(page, artifacts, "rollouts")

    card.get_by_role("button", name="Promote version 2…").click()
    dialog = page.get_by_role("dialog", name="Promote the canary")
    expect(dialog.locator(".change")).to_have_text(f"{MODEL}@{ALIAS}: version 1 → version 2")
    dialog.get_by_role("button", name="Promote").click()
    expect(card.get_by_text("now points at version 2; the canary ended.")).to_be_visible()
    expect(card.locator("[data-canary]")).to_have_text("none")
    with api(aiml) as client:
        detail = client.get(f"/models/registered_in_mlflow/{MODEL}").json()
        assert detail["model"]["aliases"][ALIAS] == 2
        assert client.get(CANARY).json()["canary"] is None

    card.get_by_label("Candidate version").select_option("1")
    card.get_by_label("Weight (%)").fill("10")
    card.get_by_role("button", name="Start canary").click()
    expect(card.locator("[data-canary]")).to_have_text("version 1 at 10 %")
    card.get_by_role("button", name="Stop canary").click()
    expect(card.get_by_text("Canary stopped: every caller on version 2 again.")).to_be_visible()
    expect(card.locator("[data-canary]")).to_have_text("none")
    with api(aiml) as client:
        assert client.get(CANARY).json()["canary"] is None

    # A staged canary: the plan's first step now, its next after the dwell.
    card.get_by_label("Candidate version").select_option("1")
    card.get_by_label("Or a plan (%, rising)").fill("5, 25")
    expect(card.get_by_label("Weight (%)")).to_be_disabled()
    card.get_by_label("Dwell per step (s)").fill("3600")
    card.get_by_role("button", name="Start canary").click()
    started = "gets 5 % of rollout@live's callers, then 25 % and promotion."
    expect(card.get_by_text(started)).to_be_visible()
    expect(card.locator("[data-canary]")).to_have_text("version 1 at 5 %")
    expect(card.locator("[data-plan]")).to_contain_text("plan 5 % → 25 %, 3600 s a step: 25 % in")
    with api(aiml) as client:
        plan = client.get(CANARY).json()["canary"]["plan"]
        assert (plan["steps"], plan["dwell_s"]) == ([5, 25], 3600)
    card.get_by_role("button", name="Stop canary").click()
    expect(card.locator("[data-canary]")).to_have_text("none")
    # The browser logs the refusal's 409 as a failed load: the one error this page expects.
    console.problems[:] = [p for p in console.problems if "status of 409" not in p]
    console.check()


def test_a_user_key_sees_the_rollouts_and_guard_trips_but_no_action(
    browser: Any, aiml: RunningAiml, registry: MlflowClient
) -> None:
    reason = "5xx ratio 0.60 against the stable's 0.00 over 30 s"  # as the guard writes it
    registry.set_model_version_tag(MODEL, "3", f"aiml.guard.{ALIAS}", reason)
    console = open_console(browser, aiml, "rollouts", key=USER_KEY)
    page = console.page
    card = page.locator(f"section[data-rollout='{MODEL}@{ALIAS}']")
    expect(card.locator("[data-canary]")).to_be_visible()
    expect(card.locator("table.health")).to_be_visible()
    expect(card.locator(".guard li[data-candidate='3']")).to_contain_text(reason)
    expect(page.get_by_role("button", name="Refresh")).to_be_visible()  # reading is for all
    for admin_only in ("Start canary", "Update canary", "Promote", "Stop canary"):
        expect(page.get_by_role("button", name=admin_only)).to_have_count(0)
    expect(page.get_by_label("Candidate version")).to_have_count(0)
    console.check()


JUDGED = "judged"
INPUTS = [
    Recorded("t1", "chat", {"messages": [{"role": "user", "content": "Name a colour."}]}),
    Recorded("t2", "chat", {"messages": [{"role": "user", "content": "Say hello."}]}),
]


def log(aiml: RunningAiml, baseline: Side, candidate: Side) -> str:
    """An evaluation run of ``JUDGED`` as ``aiml evaluate`` logs it, in this aiml's MLflow
    (which puts MLflow's process-wide tracking URI and environment back after)."""
    settings = aiml.services.settings
    run_id, _ = log_evaluation(
        settings.tracking_uri, experiment_name(settings.trace_experiment), JUDGED, INPUTS,
        baseline, candidate,
    )  # fmt: skip
    return run_id


@pytest.fixture(scope="module")
def judged(aiml: RunningAiml) -> dict[str, str]:
    """Three chat versions, the alias on 1; version 2 evaluated against 1, then version 3
    against 2 (the newest run, but not against the alias's version)."""
    uri = aiml.services.settings.registry_uri
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(JUDGED)
    for ollama_model in ("llama2:7b", "llama2:13b", "llama2:7b"):
        tags = {"ollama_model_name": ollama_model, "inference_engine": "ollama",
                "inference_task": "chat"}  # fmt: skip
        client.create_model_version(JUDGED, source="unused", tags=tags)
    client.set_registered_model_alias(JUDGED, ALIAS, "1")
    one = Side(1, ["red", "hello"], [0.10, 0.20], [2, 4])
    two = Side(2, ["red", "bonjour"], [0.30, 0.50], [3, 5])
    three = Side(3, ["rouge", "bonjour"], [0.30, 0.50], [3, 5])
    return {"2 vs 1": log(aiml, one, two), "3 vs 2": log(aiml, two, three)}


def test_the_canarys_evaluation_is_shown_beside_its_controls(
    browser: Any, aiml: RunningAiml, judged: dict[str, str], artifacts: Path
) -> None:
    with api(aiml) as client:
        path = f"/models/registered_in_mlflow/{JUDGED}/aliases/{ALIAS}/canary"
        started = client.put(path, json={"version": 2, "weight": 10})
        assert started.status_code == 200, started.text
    console = open_console(browser, aiml, "rollouts")
    page = console.page

    # This aiml's tracking URI is an sqlite file, which has no UI to link to: its answers
    # get the link an MLflow server's would carry (tests/api/test_evaluations.py checks it).
    def linked(route: Any) -> None:
        answer = route.fetch()
        body = answer.json()
        for e in body["evaluations"]:
            e["run_url"] = (
                f"http://mlflow.test/#/experiments/{e['experiment_id']}/runs/{e['run_id']}"
            )
        route.fulfill(response=answer, json=body)

    page.route("**/v1/evaluations?*", linked)
    page.reload()
    card = page.locator(f"section[data-rollout='{JUDGED}@{ALIAS}']")
    evaluation = card.locator(".evaluation")
    expect(card.locator("[data-canary]")).to_have_text("version 2 at 10 %")
    expect(evaluation).to_have_attribute("data-evaluation", judged["2 vs 1"])
    expect(card.locator(".evaluation + h3 + .rollout-actions")).to_have_count(1)  # beside them
    expect(evaluation).to_contain_text("Version 2 against version 1 on 2 recorded inputs (")
    for measure, baseline, candidate, delta in (
        ("latency_p50_s", "150 ms", "400 ms", "+250 ms"),
        ("completion_tokens_mean", "3", "4", "+1"),
        ("failed", "0", "0", "no change"),
    ):
        for side, text in (("baseline", baseline), ("candidate", candidate), ("delta", delta)):
            cell = evaluation.locator(f"td[data-side={side}][data-measure={measure}]")
            expect(cell).to_have_text(text)
    expect(evaluation.locator("[data-score=exact_match]")).to_have_text("50.0 %")
    link = evaluation.get_by_role("link", name="The run in MLflow")
    expect(link).to_have_attribute("href", re.compile(f"/runs/{judged['2 vs 1']}$"))
    found = axe_sync.Axe().run(page).response["violations"]
    assert [f"{v['id']}: {v['help']}" for v in found] == []
    keep(artifacts, "console-rollouts-evaluation.png", card.screenshot())

    # Version 3's only run is against version 2: as the canary of version 1, not evaluated.
    card.get_by_label("Candidate version").select_option("3")
    card.get_by_role("button", name="Update canary").click()
    expect(card.locator("[data-canary]")).to_have_text("version 3 at 10 %")
    command = f"aiml evaluate {JUDGED} --candidate 3 --baseline @{ALIAS}"
    expect(evaluation.locator("[data-not-evaluated] code")).to_have_text(command)
    # No canary: the newest evaluation of any version against the alias's.
    card.get_by_role("button", name="Stop canary").click()
    expect(card.locator("[data-canary]")).to_have_text("none")
    expect(evaluation).to_have_attribute("data-evaluation", judged["2 vs 1"])
    console.check()
