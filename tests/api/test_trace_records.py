"""``GET /v1/traces`` on a real ``mlflow server`` (sqlite): a version's traced requests,
newest first, with the feedback given on them and a link into MLflow's UI; a user key sees
only the traces its own requests made, an admin key everyone's; 404 with tracing off."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from mlflow import MlflowClient

from aiml.registry.trace_records import TraceRecords
from tests.conftest import Registry, RunningAiml, RunningOllama, launch_aiml, standard_stand_in
from tests.fakes.processes import Process, mlflow_server
from tests.fakes.servers import ServerThread, free_port

pytestmark = pytest.mark.slow

USER_A, USER_B, ADMIN = "records-user-a", "records-user-b", "records-admin"
MODEL = "recorded"
HEADER = "x-aiml-trace-id"


def key_name(key: str) -> str:
    """A key's name as aiml writes it (never the key): its digest's first 12 hex digits."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    process = mlflow_server(tmp_path_factory.mktemp("mlflow-records"))
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def stand_in() -> Iterator[RunningOllama]:
    state = standard_stand_in()
    thread = ServerThread(state.app(), lifespan="off").start()
    yield RunningOllama(state, thread)
    thread.stop()


@pytest.fixture(scope="module")
def registry(server: Process, tmp_path_factory: pytest.TempPathFactory) -> Registry:
    uri = server.health_url.removesuffix("/health")
    folder = tmp_path_factory.mktemp("records-artifacts")
    return Registry(uri=uri, client=MlflowClient(tracking_uri=uri), artifacts=folder)


@pytest.fixture(scope="module")
def aiml(
    tmp_path_factory: pytest.TempPathFactory, registry: Registry, stand_in: RunningOllama
) -> Iterator[RunningAiml]:
    running = launch_aiml(
        tmp_path_factory.mktemp("records-aiml"), registry, stand_in, trace_sample=1.0,
        trace_experiment="records", api_keys=f"{USER_A},{USER_B}", admin_keys=ADMIN,
    )  # fmt: skip
    with client(running, ADMIN) as admin:
        created = admin.post("/models/register_ollama", json={
            "local_model_name": "llama2:7b", "registered_name": MODEL, "task": "chat",
            "alias": "production"})  # fmt: skip
    assert created.status_code == 201, created.text
    yield running
    running.server.stop()


def client(aiml: RunningAiml, key: str) -> httpx.Client:
    return aiml.client(headers={"authorization": f"Bearer {key}"})


def chat(aiml: RunningAiml, key: str, text: str) -> str:
    """A chat as ``key``; its trace's id."""
    with client(aiml, key) as c:
        body = {"model": f"{MODEL}@production", "messages": [{"role": "user", "content": text}]}
        answer = c.post("/v1/chat/completions", json=body)
    assert answer.status_code == 200, answer.text
    return answer.headers[HEADER]


def listed(aiml: RunningAiml, key: str, **query: str | int) -> httpx.Response:
    with client(aiml, key) as c:
        return c.get("/v1/traces", params={"model_version": f"{MODEL}/1", **query})


def test_a_versions_traces_with_their_feedback_each_key_its_own(aiml: RunningAiml) -> None:
    a_first = chat(aiml, USER_A, "first from a")
    a_second = chat(aiml, USER_A, "second from a")
    b_only = chat(aiml, USER_B, "only from b")
    admins = chat(aiml, ADMIN, "from the admin")
    assert aiml.services.traces is not None and aiml.services.traces.flush()
    with client(aiml, USER_A) as c:
        given = c.post("/v1/feedback", json={
            "trace_id": a_first, "value": False, "comment": "made that up"})  # fmt: skip
    assert given.status_code == 200, given.text

    mine = listed(aiml, USER_A)
    assert mine.status_code == 200, mine.text
    body = mine.json()
    assert body["scope"] == "own" and body["model_version"] == f"{MODEL}/1"
    traces = body["traces"]
    assert [t["trace_id"] for t in traces] == [a_second, a_first]  # newest first
    assert traces[0]["timestamp_ms"] >= traces[1]["timestamp_ms"]
    rated = traces[1]
    assert (rated["model_version"], rated["alias"], rated["arm"]) == (
        f"{MODEL}/1", "production", "stable")  # fmt: skip
    assert rated["key_name"] == key_name(USER_A) and rated["surface"] == "openai"
    assert rated["state"] == "OK" and rated["status_code"] == 200
    assert rated["execution_ms"] is not None and rated["execution_ms"] >= 0
    assert rated["output_tokens"] > 0
    assert "first from a" in rated["request_preview"]
    assert "llama2:7b" in rated["response_preview"]  # the stand-in names its model
    [feedback] = rated["feedback"]
    assert feedback["name"] == "user_feedback" and feedback["value"] is False
    assert feedback["rationale"] == "made that up"
    assert feedback["source_type"] == "HUMAN"
    assert feedback["source_id"] == given.json()["source"] == key_name(USER_A)
    assert feedback["assessment_id"] == given.json()["assessment_id"]
    assert traces[0]["feedback"] == []

    # The link: the experiment's traces tab in MLflow's UI, on this trace.
    experiment = body["experiment_id"]
    link = urlsplit(rated["ui_url"])
    assert f"{link.scheme}://{link.netloc}" == aiml.services.settings.tracking_uri.rstrip("/")
    assert link.fragment.startswith(f"/experiments/{experiment}/traces?")
    query = parse_qs(link.fragment.partition("?")[2])
    assert query == {"selectedEvaluationId": [a_first], "traceId": [a_first]}
    assert body["experiment_url"] == rated["ui_url"].partition("?")[0]
    page = httpx.get(rated["ui_url"], timeout=30)  # MLflow's UI (the fragment stays here)
    assert page.status_code == 200 and "<html" in page.text.lower()

    assert [t["trace_id"] for t in listed(aiml, USER_B).json()["traces"]] == [b_only]
    # MLflow's search itself keeps to the key's traces (newer ones by others are not
    # counted against max_results).
    assert [t["trace_id"] for t in listed(aiml, USER_A, max_results=1).json()["traces"]] == [
        a_second
    ]
    everyone = listed(aiml, ADMIN).json()
    assert everyone["scope"] == "all"
    assert [t["trace_id"] for t in everyone["traces"]] == [admins, b_only, a_second, a_first]
    assert [t["key_name"] for t in everyone["traces"]] == [
        key_name(ADMIN), key_name(USER_B), key_name(USER_A), key_name(USER_A)]  # fmt: skip
    assert [t["trace_id"] for t in listed(aiml, ADMIN, max_results=1).json()["traces"]] == [admins]


def test_unknown_versions_are_empty_and_malformed_ones_refused(aiml: RunningAiml) -> None:
    with client(aiml, USER_A) as c:
        unknown = c.get("/v1/traces", params={"model_version": f"{MODEL}/99"})
        assert unknown.status_code == 200, unknown.text
        assert unknown.json()["traces"] == []
        for bad in ("recorded", "recorded/x", "it's/1", "recorded/0"):
            refused = c.get("/v1/traces", params={"model_version": bad})
            assert refused.status_code == 400, (bad, refused.text)
            assert refused.json()["error"]["param"] == "query.model_version"
        too_many = c.get("/v1/traces", params={"model_version": f"{MODEL}/1", "max_results": 101})
        assert too_many.status_code == 400, too_many.text
        assert c.get("/v1/traces", params={"model_version": f"{MODEL}/1"}).status_code == 200
    with aiml.client() as anonymous:  # a user route: a key is needed
        assert (
            anonymous.get("/v1/traces", params={"model_version": f"{MODEL}/1"}).status_code == 401
        )


def test_before_the_first_trace_none_and_with_mlflow_down_503(
    aiml: RunningAiml, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = aiml.services.settings.tracking_uri
    unwritten = TraceRecords(uri, "never-written", timeout_s=5)
    monkeypatch.setattr(aiml.services, "trace_records", unwritten)
    empty = listed(aiml, ADMIN)
    assert empty.status_code == 200, empty.text
    assert empty.json()["experiment_id"] is None and empty.json()["experiment_url"] is None
    assert empty.json()["traces"] == []
    # Waited for at most the timeout, whatever MLflow's own retries would take.
    down = TraceRecords(f"http://127.0.0.1:{free_port()}", "records", timeout_s=2)
    monkeypatch.setattr(aiml.services, "trace_records", down)
    refused = listed(aiml, ADMIN)
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "registry_unavailable"


def test_with_tracing_off_the_traces_are_not_found(
    tmp_path: Path, registry: Registry, stand_in: RunningOllama
) -> None:
    untraced = launch_aiml(tmp_path, registry, stand_in)
    try:
        with untraced.client() as c:
            answer = c.get("/v1/traces", params={"model_version": f"{MODEL}/1"})
        assert answer.status_code == 404, answer.text
        assert "tracing is off" in answer.json()["error"]["message"]
    finally:
        untraced.server.stop()
