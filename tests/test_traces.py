"""Served requests as MLflow traces, on a real ``mlflow server`` (sqlite): each sampled
request on every surface is a trace in aiml's experiment with its registry version, alias
and arm as tags, GenAI attributes and token counts, and spans for its steps; the response
names it (``x-aiml-trace-id``); sampling and content modes hold; feedback lands on the
trace as the key's; an MLflow server stopped under load loses no request (its traces are
counted as lost)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow import MlflowClient

from aiml.errors import NotFound, RegistryUnavailable
from aiml.observability.trace_export import Destination, TraceExporter
from aiml.observability.tracing import RequestTrace
from aiml.registry.feedback import TraceFeedback
from tests.conftest import Registry, RunningAiml, RunningOllama, launch_aiml
from tests.fakes.processes import Process, mlflow_server
from tests.test_trace_export import Slow

pytestmark = pytest.mark.slow

CHAT = [{"role": "user", "content": "hello there"}]
HEADER = "x-aiml-trace-id"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    process = mlflow_server(tmp_path_factory.mktemp("mlflow-traces"))
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def mlflow(server: Process) -> MlflowClient:
    return MlflowClient(tracking_uri=server.health_url.removesuffix("/health"))


def _registry(mlflow: MlflowClient, tmp_path: Path) -> Registry:
    return Registry(uri=mlflow.tracking_uri, client=mlflow, artifacts=tmp_path / "artifacts")


def _register(aiml: RunningAiml, name: str) -> None:
    """``name@production`` on the stand-in's llama2:7b, as a user registers it."""
    with aiml.client() as client:
        created = client.post("/models/register_ollama", json={
            "local_model_name": "llama2:7b", "registered_name": name, "task": "chat",
            "alias": "production"})  # fmt: skip
    assert created.status_code == 201, created.text


def _experiment(mlflow: MlflowClient, name: str) -> str:
    found = mlflow.get_experiment_by_name(name)
    assert found is not None
    return str(found.experiment_id)


def _traces(mlflow: MlflowClient, experiment: str, ids: set[str]) -> dict[str, Any]:
    traces = mlflow.search_traces(locations=[_experiment(mlflow, experiment)], max_results=500)
    return {t.info.trace_id: t for t in traces if t.info.trace_id in ids}


def _start(
    tmp_path: Path, registry: Registry, ollama: RunningOllama, **settings: Any
) -> RunningAiml:
    return launch_aiml(tmp_path, registry, ollama, **{"trace_sample": 1.0, **settings})


def test_requests_on_every_surface_are_traces_with_their_version(
    tmp_path: Path, mlflow: MlflowClient, ollama: RunningOllama
) -> None:
    aiml = _start(tmp_path, _registry(mlflow, tmp_path), ollama, trace_experiment="surfaces")
    _register(aiml, "traced")
    model = "traced@production"
    with aiml.client() as client:
        answers = [
            client.post("/v1/chat/completions", json={"model": model, "messages": CHAT}),
            client.post("/api/chat", json={"model": model, "messages": CHAT, "stream": False}),
            client.post("/inference/infer", json={
                "task": "chat", "engine": "ollama", "model_name": model,
                "data": {"messages": CHAT}}),
        ]  # fmt: skip
        with client.stream(
            "POST", "/v1/chat/completions", json={"model": model, "messages": CHAT, "stream": True}
        ) as streamed:
            streamed.read()
        answers.append(streamed)
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.is_error]
    ids = {a.headers[HEADER] for a in answers}
    assert len(ids) == 4 and all(i.startswith("tr-") and len(i) == 35 for i in ids)
    assert aiml.services.traces is not None and aiml.services.traces.flush()
    traces = _traces(mlflow, "surfaces", ids)
    assert set(traces) == ids
    surfaces = set()
    for trace in traces.values():
        tags = trace.info.tags
        assert (tags["aiml.model_version"], tags["aiml.alias"], tags["aiml.arm"]) == (
            "traced/1", "production", "stable")  # fmt: skip
        root = next(s for s in trace.data.spans if s.parent_id is None)
        attributes = root.attributes
        assert attributes["gen_ai.request.model"] == model
        assert attributes["gen_ai.response.model"] == "llama2:7b"
        assert attributes["http.response.status_code"] == 200
        assert attributes["gen_ai.usage.output_tokens"] > 0
        surfaces.add(attributes["aiml.surface"])
        usage = json.loads(trace.info.trace_metadata["mlflow.trace.tokenUsage"])
        assert usage["output_tokens"] == attributes["gen_ai.usage.output_tokens"]
        names = {s.name for s in trace.data.spans}
        assert {"locate", "resolve", "engine"} <= names, names
        assert "hello there" in trace.info.request_preview
        assert "llama2:7b" in trace.info.response_preview  # the stand-in names its model
    assert surfaces == {"openai", "ollama", "aiml"}
    # Linked to the version's logged model (MLflow 3's link): the model's traces are these.
    model_id = mlflow.get_model_version("traced", "1").source.removeprefix("models:/")
    assert {t.info.trace_metadata.get("mlflow.modelId") for t in traces.values()} == {model_id}
    linked = mlflow.search_traces(locations=[_experiment(mlflow, "surfaces")], model_id=model_id)
    assert {t.info.trace_id for t in linked} == ids
    streamed_trace = traces[streamed.headers[HEADER]]
    names = {s.name for s in streamed_trace.data.spans}
    assert {"prefill", "generation"} <= names  # a stream's first token splits its engine span


def test_sampling_and_content_modes_hold(
    tmp_path: Path, mlflow: MlflowClient, ollama: RunningOllama
) -> None:
    registry = _registry(mlflow, tmp_path)
    half = _start(tmp_path / "half", registry, ollama, trace_sample=0.5, trace_experiment="half")
    _register(half, "sampled")
    with half.client() as client:
        headers = [
            client.post(
                "/v1/chat/completions", json={"model": "sampled@production", "messages": CHAT}
            ).headers
            for _ in range(200)
        ]
    traced = sum(HEADER in h for h in headers)
    assert 65 <= traced <= 135, traced  # 100 expected; beyond 5 sigma either way
    for content, check in (
        ("none", lambda t: t.info.request_preview in (None, "") and not t.info.response_preview),
        # MLflow previews a chat by its last user message.
        (
            "truncated",
            lambda t: (
                t.info.request_preview == "hello th…"
                and json.loads(t.info.response_preview) == "llama2:7…"
            ),
        ),
    ):
        aiml = _start(tmp_path / content, registry, ollama, trace_content=content,
                      trace_content_chars=8, trace_experiment=f"content-{content}")  # fmt: skip
        with aiml.client() as client:
            answer = client.post("/v1/chat/completions", json={"model": "sampled@production",
                                                                "messages": CHAT})  # fmt: skip
        assert aiml.services.traces is not None and aiml.services.traces.flush()
        [trace] = _traces(mlflow, f"content-{content}", {answer.headers[HEADER]}).values()
        assert check(trace), (content, trace.info.request_preview, trace.info.response_preview)


def test_feedback_lands_on_the_trace_as_the_keys(
    tmp_path: Path, mlflow: MlflowClient, ollama: RunningOllama
) -> None:
    aiml = _start(tmp_path, _registry(mlflow, tmp_path), ollama, trace_experiment="rated")
    _register(aiml, "rated")
    with aiml.client() as client:
        answer = client.post("/v1/chat/completions", json={"model": "rated@production",
                                                            "messages": CHAT})  # fmt: skip
        trace_id = answer.headers[HEADER]
        deadline = time.monotonic() + 60
        while True:  # a cold MLflow may take its first batch in more than the route waits
            given = client.post("/v1/feedback", json={
                "trace_id": trace_id, "value": False, "comment": "made up an answer"})  # fmt: skip
            if given.status_code != 503 or time.monotonic() > deadline:
                break
            assert "on its way" in given.text
        assert given.status_code == 200, given.text
        assert given.json()["source"] == "anonymous"  # no keys here
        unknown = client.post("/v1/feedback", json={"trace_id": "tr-" + "0" * 32, "value": 1})
        assert unknown.status_code == 404, unknown.text
        malformed = client.post("/v1/feedback", json={"trace_id": "nope", "value": True})
        assert malformed.status_code == 400, malformed.text
        assert malformed.json()["error"]["param"] == "trace_id"
    [assessment] = [
        a for a in mlflow.get_trace(trace_id).info.assessments if a.name == "user_feedback"
    ]
    assert assessment.value is False
    assert assessment.rationale == "made up an answer"
    assert assessment.source.source_type == "HUMAN"
    assert assessment.source.source_id == given.json()["source"]


def test_feedback_on_a_trace_still_on_its_way_is_a_503_to_retry(mlflow: MlflowClient) -> None:
    """A cold MLflow takes its first batch in more than the feedback's wait: a trace it does
    not know yet is then a 503 (retry), not the 404 of a trace that is not coming."""
    sink = Slow()  # holds every post: the queued trace stays on its way
    exporter = TraceExporter([Destination("held", sink.url, dict)], resource={}, every_s=0.05)
    try:
        exporter.submit(RequestTrace("chat"))
        assert sink.wait_posts(1)
        on_its_way = TraceFeedback(mlflow.tracking_uri, exporter, wait_s=0.2)
        with pytest.raises(RegistryUnavailable, match="on its way"):
            on_its_way.record("tr-" + "1" * 32, name="f", value=1, comment=None, source="k")
        sink.release.set()
        assert exporter.flush()
        with pytest.raises(NotFound):  # everything arrived: it is not coming
            on_its_way.record("tr-" + "1" * 32, name="f", value=1, comment=None, source="k")
    finally:
        sink.release.set()
        exporter.close()
        sink.server.shutdown()


def test_an_mlflow_server_stopped_under_load_loses_no_request(
    tmp_path: Path, ollama: RunningOllama
) -> None:
    process = mlflow_server(tmp_path / "mlflow")
    process.start()
    mlflow = MlflowClient(tracking_uri=process.health_url.removesuffix("/health"))
    aiml = _start(tmp_path, _registry(mlflow, tmp_path), ollama, trace_experiment="outage")
    _register(aiml, "outage")
    body = {"model": "outage@production", "messages": CHAT}
    exporter = aiml.services.traces
    assert exporter is not None
    with aiml.client() as client:
        before = [_timed(client, body) for _ in range(50)]
        assert exporter.flush() and exporter.exported["mlflow"] >= 50
        process.stop()
        during = [_timed(client, body) for _ in range(50)]
        assert exporter.flush(timeout_s=30)
    assert exporter.failed["mlflow"] >= 1  # counted, not waited for
    assert exporter.exported["mlflow"] + exporter.failed["mlflow"] == exporter.submitted
    # No request failed, and none waited for MLflow: the median moved by under 5 ms.
    ordered = sorted(during)
    assert ordered[25] < sorted(before)[25] + 0.005, (sorted(before)[25], ordered[25])


def _timed(client: httpx.Client, body: dict[str, Any]) -> float:
    started = time.perf_counter()
    answer = client.post("/v1/chat/completions", json=body)
    assert answer.status_code == 200, answer.text
    return time.perf_counter() - started
