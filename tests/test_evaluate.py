"""``aiml evaluate`` on recorded traffic, end to end on a real ``mlflow server`` (sqlite)
and the bundled SmolLM2: requests to ``smol@production`` are traced; the command replays
their inputs (and sampling) on the baseline and on a candidate through aiml's gate and logs
an MLflow evaluation run naming both versions, the candidate tagged with it. A copy of the
baseline (greedy decoding) matches it on every input; a version whose system prompt differs
(``aiml.system_prompt``) does not. A shadow of the baseline (v3, every request) records its
copies as traces holding both answers; ``--shadow`` logs them as an evaluation run too,
nothing asked again."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from aiml.cli import app
from aiml.inference.catalog import ModelCatalog
from aiml.registry.mlflow import MlflowRegistry
from tests.conftest import ModelFiles, Registry, RunningOllama, launch_aiml
from tests.fakes.processes import mlflow_server

pytestmark = pytest.mark.slow

LLAMA = {"engines": "llamacpp", "llamacpp_n_ctx": 512, "llamacpp_threads": 1}
ENV = {"AIML_ENGINES": "llamacpp", "AIML_LLAMACPP_N_CTX": "512", "AIML_LLAMACPP_THREADS": "1"}
PROMPTS = ["Name a colour.", "What is two plus two?", "Say hello."]


def test_a_candidate_is_evaluated_on_recorded_traffic(
    tmp_path: Path, model_files: ModelFiles, ollama: RunningOllama
) -> None:
    server = mlflow_server(tmp_path / "mlflow")
    server.start(timeout_s=120)
    try:
        uri = server.health_url.removesuffix("/health")
        mlflow = MlflowClient(tracking_uri=uri, registry_uri=uri)
        catalog = ModelCatalog(MlflowRegistry(mlflow, uri=uri, artifact_location=None), {})
        for alias in ("production", None, None):  # 1 (the baseline), 2 and 3 the same files
            asyncio.run(catalog.register_files(
                model_files.smollm2, "smol", task="chat", alias=alias, force=True))  # fmt: skip
        mlflow.set_model_version_tag("smol", "2", "aiml.system_prompt", "Reply in French only.")
        mlflow.set_model_version_tag("smol", "1", "aiml.shadow.production", "3:100")
        registry = Registry(uri=uri, client=mlflow, artifacts=tmp_path / "unused")
        aiml = launch_aiml(tmp_path / "front", registry, ollama, trace_sample=1.0, **LLAMA)
        primaries = set()
        with aiml.client() as client:
            for done, prompt in enumerate(PROMPTS, start=1):
                body = {"model": "smol@production", "max_tokens": 12, "temperature": 0,
                        "messages": [{"role": "user", "content": prompt}]}  # fmt: skip
                answer = client.post("/v1/chat/completions", json=body)
                assert answer.status_code == 200
                primaries.add(answer.headers["x-aiml-trace-id"])
                # One at a time: a copy batched with the next request may decode otherwise.
                _until_compared(client, "smol@production -> 3", done)
        assert aiml.services.traces is not None and aiml.services.traces.flush()
        aiml.server.stop()

        env = {**ENV, "MLFLOW_TRACKING_URI": uri, "AIML_HOME": str(tmp_path / "cli")}
        runs = {}
        for candidate in (3, 2):
            args = ["evaluate", "smol", "--candidate", str(candidate), "--rate", "50"]
            done = CliRunner().invoke(app, args, env=env)
            assert done.exit_code == 0, done.output
            run_id = done.output.strip().split()[-1]
            runs[candidate] = mlflow.get_run(run_id)
        tags = mlflow.get_model_version("smol", "2").tags
        models = {v: mlflow.get_model_version("smol", str(v)).source[len("models:/") :]
                  for v in (1, 2)}  # fmt: skip
        args = ["evaluate", "smol", "--candidate", "3", "--shadow"]
        done = CliRunner().invoke(app, args, env=env)
        assert done.exit_code == 0, done.output
        shadowed = mlflow.get_run(done.output.strip().split()[-1]).data
        (experiment,) = mlflow.search_experiments(filter_string="name = 'aiml-traces'")
        copies = mlflow.search_traces(
            locations=[experiment.experiment_id], filter_string="tags.`aiml.arm` = 'shadow'"
        )
    finally:
        server.stop()
    assert {c.info.tags["aiml.shadow_of"] for c in copies} == primaries
    assert {c.info.tags["aiml.model_version"] for c in copies} == {"smol/3"}
    assert shadowed.tags["aiml.evaluation"] == "shadow"
    assert (shadowed.tags["aiml.baseline_version"], shadowed.tags["aiml.candidate_version"]) == (
        "1",
        "3",
    )
    assert shadowed.metrics["recorded_inputs"] == len(PROMPTS)
    assert shadowed.metrics["exact_match/mean"] == 1.0  # the same files, greedy
    assert shadowed.metrics["candidate_completion_tokens_mean"] > 0
    same, different = runs[3].data, runs[2].data
    assert same.metrics["recorded_inputs"] == len(PROMPTS)
    assert same.metrics["exact_match/mean"] == 1.0  # greedy, the same files: the same answers
    assert different.metrics["exact_match/mean"] < 1.0  # another system prompt answers otherwise
    for candidate, data in ((3, same), (2, different)):
        assert data.tags["aiml.baseline_version"] == "1"
        assert data.tags["aiml.candidate_version"] == str(candidate)
        assert data.metrics["candidate_failed"] == data.metrics["baseline_failed"] == 0
        assert data.metrics["candidate_completion_tokens_mean"] > 0
    assert tags["aiml.evaluation.v1"] == runs[2].info.run_id
    # Linked to both versions' logged models, as MLflow 3 links a run to the models it judged.
    assert {m.model_id for m in runs[2].inputs.model_inputs} == set(models.values())


def _until_compared(client: httpx.Client, key: str, count: int) -> None:
    """Until the shadow compared ``count`` copies (their traces are submitted first)."""
    deadline = time.monotonic() + 90  # the first copy loads version 3
    while True:
        report = client.get("/inference/stats").json()["stats"]["shadow"].get(key)
        if report is not None and report["compared"] + report["failed"] >= count:
            assert report["failed"] == 0, report
            return
        assert time.monotonic() < deadline, report
