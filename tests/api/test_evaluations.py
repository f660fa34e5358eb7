"""``GET /v1/evaluations`` on a real ``mlflow server`` (sqlite): the evaluation runs
``aiml evaluate`` logs (written here by its own code, evaluation_runs.py, on answers given
rather than replayed) read back newest first, filtered by candidate and baseline, each
side's metrics and the delta, the scorers' means, a link to the run in MLflow's UI; any key
reads them; a name that is no registry name is refused before it reaches MLflow's filter;
MLflow unreachable is a 503."""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import mlflow
import pytest
from mlflow import MlflowClient

from aiml.errors import RegistryUnavailable
from aiml.registry.evaluation_records import EvaluationRecords, experiment_name
from aiml.registry.evaluation_runs import Recorded, Side, log_evaluation
from tests.conftest import Registry, RunningAiml, RunningOllama, launch_aiml, standard_stand_in
from tests.fakes.processes import Process, mlflow_server
from tests.fakes.servers import ServerThread, free_port

pytestmark = pytest.mark.slow

USER, ADMIN = "evaluations-user", "evaluations-admin"
MODEL, EXPERIMENT = "evaluated", "evaluations-traces"
INPUTS = [
    Recorded("t1", "chat", {"messages": [{"role": "user", "content": "Name a colour."}]}),
    Recorded("t2", "chat", {"messages": [{"role": "user", "content": "Say hello."}]}),
]


def log(uri: str, baseline: Side, candidate: Side) -> str:
    """An evaluation run as ``aiml evaluate`` logs it (MLflow's process-wide tracking URI
    and environment are put back after: checked here)."""
    before = os.environ.get("MLFLOW_TRACKING_URI"), mlflow.is_tracking_uri_set()
    run_id, _ = log_evaluation(uri, experiment_name(EXPERIMENT), MODEL, INPUTS, baseline, candidate)
    assert (os.environ.get("MLFLOW_TRACKING_URI"), mlflow.is_tracking_uri_set()) == before
    return run_id


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    process = mlflow_server(tmp_path_factory.mktemp("mlflow-evaluations"))
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def runs(server: Process) -> dict[int, str]:
    """Version 2 (as the baseline answered) then 3 (otherwise, slower, longer), each
    against version 1; the run of each candidate."""
    uri = server.health_url.removesuffix("/health")
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(MODEL)
    for _ in range(3):
        client.create_model_version(MODEL, source="s3://unused/model")
    baseline = Side(1, ["red", "hello"], [0.10, 0.20], [1, 2])
    same = Side(2, ["red", "hello"], [0.10, 0.30], [1, 2])
    other = Side(3, ["rouge", "bonjour"], [0.40, 0.60], [3, 5])
    return {2: log(uri, baseline, same), 3: log(uri, baseline, other)}


@pytest.fixture(scope="module")
def aiml(tmp_path_factory: pytest.TempPathFactory, server: Process) -> Iterator[RunningAiml]:
    uri = server.health_url.removesuffix("/health")
    folder = tmp_path_factory.mktemp("evaluations-aiml")
    registry = Registry(uri=uri, client=MlflowClient(tracking_uri=uri), artifacts=folder / "a")
    state = standard_stand_in()
    stand_in = ServerThread(state.app(), lifespan="off").start()
    running = launch_aiml(
        folder, registry, RunningOllama(state, stand_in),
        trace_experiment=EXPERIMENT, api_keys=USER, admin_keys=ADMIN,
    )  # fmt: skip
    yield running
    running.server.stop()
    stand_in.stop()


def client(aiml: RunningAiml, key: str) -> httpx.Client:
    return aiml.client(headers={"authorization": f"Bearer {key}"})


def test_a_models_evaluations_newest_first_with_both_sides_and_a_link(
    aiml: RunningAiml, server: Process, runs: dict[int, str]
) -> None:
    with client(aiml, USER) as user:  # any key reads them
        answer = user.get("/v1/evaluations", params={"model": MODEL})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        only_2 = user.get("/v1/evaluations", params={"model": MODEL, "candidate": 2}).json()
        against_2 = user.get("/v1/evaluations", params={"model": MODEL, "baseline": 2}).json()
        unknown = user.get("/v1/evaluations", params={"model": "never-evaluated"}).json()
        one = user.get("/v1/evaluations", params={"model": MODEL, "max_results": 1}).json()
    newest, older = body["evaluations"]
    assert [newest["run_id"], older["run_id"]] == [runs[3], runs[2]]
    assert (newest["candidate_version"], newest["baseline_version"]) == (3, 1)
    assert newest["status"] == "FINISHED" and newest["kind"] == "recorded"
    assert newest["recorded_inputs"] == len(INPUTS)
    assert newest["start_time_ms"] >= older["start_time_ms"]
    assert newest["scores"]["exact_match"] == 0.0 and older["scores"]["exact_match"] == 1.0
    sides = newest["sides"]
    assert sides["baseline"]["latency_p50_s"] == pytest.approx(0.15)
    assert sides["candidate"]["latency_p50_s"] == pytest.approx(0.50)
    assert sides["candidate"]["completion_tokens_mean"] == 4.0
    assert sides["candidate"]["failed"] == sides["baseline"]["failed"] == 0
    assert newest["delta"]["latency_p50_s"] == pytest.approx(0.35)
    assert newest["delta"]["completion_tokens_mean"] == 2.5
    uri = server.health_url.removesuffix("/health")
    experiment = body["experiment_id"]
    assert newest["run_url"] == f"{uri}/#/experiments/{experiment}/runs/{runs[3]}"
    with httpx.Client() as browser:  # the UI's page is there (its route is the fragment)
        assert browser.get(newest["run_url"]).status_code == 200
    assert [e["run_id"] for e in only_2["evaluations"]] == [runs[2]]
    assert against_2["evaluations"] == [] and unknown["evaluations"] == []
    assert [e["run_id"] for e in one["evaluations"]] == [runs[3]]


def test_keys_names_and_mlflow_down(aiml: RunningAiml, monkeypatch: pytest.MonkeyPatch) -> None:
    with aiml.client() as anonymous:
        assert anonymous.get("/v1/evaluations", params={"model": MODEL}).status_code == 401
    with client(aiml, ADMIN) as admin:
        assert admin.get("/v1/evaluations", params={"model": MODEL}).status_code == 200
        for bad in ("it's", "a b", "x/y"):  # a quote would end MLflow's filter string
            refused = admin.get("/v1/evaluations", params={"model": bad})
            assert refused.status_code == 400, refused.text
            assert refused.json()["error"]["param"] == "model"
        assert admin.get("/v1/evaluations").status_code == 400  # model is required
        too_many = {"model": MODEL, "max_results": 51}
        assert admin.get("/v1/evaluations", params=too_many).status_code == 400
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    down = EvaluationRecords(f"http://127.0.0.1:{free_port()}", "anything")
    with pytest.raises(RegistryUnavailable):
        down.recent(MODEL)
