"""A candidate version evaluated on recorded traffic, as an MLflow evaluation run.

The recorded inputs are the traces aiml wrote for a registered model (trace_export.py),
read back with ``search_traces``. The comparison is logged with MLflow's own GenAI
evaluation (``mlflow.genai.evaluate``): one row per recorded input, the candidate's answer
as its output and the baseline's as its expected response, scored per row by the
deterministic scorers here (and any MLflow scorer the user names), in a run whose tags name
both versions; the candidate version gets a tag naming the run, so MLflow's UI leads from
the version to its evaluation. Latency and token counts of both sides are the run's metrics.

A shadow's comparisons are logged the same way (``aiml.evaluation`` = ``shadow``), from the
traces of its copies, each holding the input and both answers (:func:`shadow_pairs`).

``mlflow.genai.evaluate`` reads the process's tracking URI and experiment, so
:func:`log_evaluation` sets them for its run and puts the URI and MLflow's environment
variables back after (the active experiment stays: MLflow has no public way to clear it);
it is for the ``aiml evaluate`` command's own process, not the service's.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import statistics
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import LoggedModelInput
from mlflow.genai.scorers import Scorer, scorer

from aiml.errors import InvalidRequest, NotFound

#: What MLflow's fluent API writes into the environment (for child processes).
_MLFLOW_ENVIRONMENT = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")

__all__ = [
    "Recorded", "Side", "log_evaluation", "recorded_inputs", "shadow_pairs", "user_scorer",
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class Recorded:
    trace_id: str
    task: str
    input: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Side:
    """One version's answers to the recorded inputs, in their order."""

    version: int
    texts: Sequence[str | None]  # None: the request failed
    latencies_s: Sequence[float]
    tokens: Sequence[int | None]
    logged_model: str | None = None  # the version's MLflow 3 logged model, where it has one


def recorded_inputs(
    tracking_uri: str, experiment: str, name: str, *, limit: int, since_ms: int | None = None
) -> list[Recorded]:
    """The inputs of ``name``'s last ``limit`` traced requests (since ``since_ms``), oldest
    first; traces that kept no input (AIML_TRACE_CONTENT=none) are skipped."""
    where = f"tags.`aiml.registered_model` = '{name}'"
    traces = _newest_traces(tracking_uri, experiment, where, limit, since_ms)
    recorded = []
    for trace in reversed(traces):
        request = trace.data.request
        root = next((s for s in trace.data.spans if s.parent_id is None), None)
        task = root.attributes.get("aiml.task") if root is not None else None
        if not request or not isinstance(task, str):
            continue
        recorded.append(Recorded(trace.info.trace_id, task, json.loads(request)))
    return recorded


def shadow_pairs(
    tracking_uri: str, experiment: str, name: str, candidate: int, *, limit: int,
    since_ms: int | None = None,
) -> tuple[list[Recorded], Side, Side]:  # fmt: skip
    """What ``name``'s shadow recorded of ``candidate``: the last ``limit`` copies' traces
    (since ``since_ms``; request_traces.shadow_recorder), oldest first, with the caller's
    answers as the baseline side; only copies made beside the newest copy's version, so a
    run compares two versions. Nothing is asked again: both answers were recorded."""
    where = (
        f"tags.`aiml.shadowed_model` = '{name}' AND "
        f"tags.`aiml.model_version` = '{name}/{candidate}'"
    )
    traces = _newest_traces(tracking_uri, experiment, where, limit, since_ms)
    pairs = [(trace, _root_attributes(trace)) for trace in traces if trace.data.request]
    baseline = next((int(a["aiml.primary.version"]) for _, a in pairs), 0)
    pairs = [(t, a) for t, a in reversed(pairs) if a.get("aiml.primary.version") == baseline]
    recorded = [
        Recorded(t.info.trace_id, str(a.get("aiml.task")), json.loads(t.data.request))
        for t, a in pairs
    ]
    primary = Side(
        baseline,
        [a.get("aiml.primary.output") for _, a in pairs],
        [float(a.get("aiml.primary.latency_s", math.nan)) for _, a in pairs],
        [a.get("aiml.primary.output_tokens") for _, a in pairs],
    )
    copies = Side(
        candidate,
        [_text(t.data.response) if a.get("http.response.status_code") == 200 else None
         for t, a in pairs],
        [(t.info.execution_duration or 0) / 1000 for t, _ in pairs],
        [a.get("gen_ai.usage.output_tokens") for _, a in pairs],
    )  # fmt: skip
    return recorded, primary, copies


def _newest_traces(
    tracking_uri: str, experiment: str, where: str, limit: int, since_ms: int | None
) -> list[Any]:
    """The newest ``limit`` traces of ``experiment`` matching ``where`` (since ``since_ms``)."""
    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise NotFound(f"no trace experiment {experiment!r}: nothing was recorded", param="name")
    if since_ms is not None:
        where += f" AND timestamp_ms > {since_ms}"
    return list(client.search_traces(
        locations=[found.experiment_id], filter_string=where, max_results=limit,
        order_by=["timestamp_ms DESC"],
    ))  # fmt: skip


def _root_attributes(trace: Any) -> dict[str, Any]:
    root = next((s for s in trace.data.spans if s.parent_id is None), None)
    return dict(root.attributes) if root is not None else {}


def _text(response: str | None) -> str | None:
    """A trace's output as the text it was (the exporter writes it as JSON)."""
    if response is None:
        return None
    try:
        value = json.loads(response)
    except ValueError:
        return response
    return value if isinstance(value, str) else response


def user_scorer(path: str) -> Scorer:
    """An MLflow scorer named ``module:attribute`` (a scorer, or a class made into one)."""
    module, _, attribute = path.partition(":")
    try:
        found = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError, ValueError) as exc:
        raise InvalidRequest(f"no scorer {path!r}: {exc}", param="scorer") from None
    made = found() if isinstance(found, type) else found
    if not isinstance(made, Scorer):
        raise InvalidRequest(f"{path!r} is not an MLflow scorer", param="scorer")
    return made


def log_evaluation(
    tracking_uri: str,
    experiment: str,
    name: str,
    recorded: Sequence[Recorded],
    baseline: Side,
    candidate: Side,
    *,
    similarity: Callable[[str, str], float] | None = None,
    extra: Sequence[Scorer] = (),
    source: str = "recorded",
) -> tuple[str, dict[str, float]]:
    """Log the comparison; the run's id and its metrics. ``source``: how the answers were
    had, ``recorded`` (inputs replayed on both) or ``shadow`` (both recorded as served)."""
    with _process_wide(tracking_uri, experiment):
        return _log(
            tracking_uri, name, recorded, baseline, candidate,
            similarity=similarity, extra=extra, source=source,
        )  # fmt: skip


@contextlib.contextmanager
def _process_wide(tracking_uri: str, experiment: str) -> Iterator[None]:
    """MLflow's process-wide tracking URI and experiment for the run, the URI and the
    environment put back after."""
    saved = {name: os.environ.get(name) for name in _MLFLOW_ENVIRONMENT}
    set_before = mlflow.is_tracking_uri_set()  # type: ignore[no-untyped-call]  # untyped in 3.17
    previous = mlflow.get_tracking_uri() if set_before else None
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)  # type: ignore[arg-type]  # None unsets, as MLflow does
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _log(
    tracking_uri: str,
    name: str,
    recorded: Sequence[Recorded],
    baseline: Side,
    candidate: Side,
    *,
    similarity: Callable[[str, str], float] | None,
    extra: Sequence[Scorer],
    source: str,
) -> tuple[str, dict[str, float]]:
    rows = [
        {
            "inputs": dict(r.input),
            "outputs": c or "",
            "expectations": {"expected_response": b or ""},
        }
        for r, b, c in zip(recorded, baseline.texts, candidate.texts, strict=True)
    ]
    scorers = [exact_match, *(_json_valid(recorded),), *extra]
    if similarity is not None:
        scorers.append(_similarity(similarity))
    tags = {
        "aiml.registered_model": name,
        "aiml.baseline_version": str(baseline.version),
        "aiml.candidate_version": str(candidate.version),
        "aiml.evaluation": source,
    }
    run_name = f"{name} v{candidate.version} vs v{baseline.version}"
    with mlflow.start_run(run_name=run_name, tags=tags) as run:
        # The run is the candidate's evaluation in MLflow's terms (its logged model's page
        # lists it) and has both versions' models as inputs.
        models = [s.logged_model for s in (baseline, candidate) if s.logged_model is not None]
        if models:
            MlflowClient(tracking_uri=tracking_uri).log_inputs(
                run.info.run_id, models=[LoggedModelInput(m) for m in models]
            )
        result = mlflow.genai.evaluate(data=rows, scorers=scorers, model_id=candidate.logged_model)
        metrics = {k: float(v) for k, v in result.metrics.items()}
        metrics |= _side_metrics("baseline", baseline) | _side_metrics("candidate", candidate)
        metrics["recorded_inputs"] = float(len(rows))
        mlflow.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)})
    MlflowClient(tracking_uri=tracking_uri).set_model_version_tag(
        name, str(candidate.version), f"aiml.evaluation.v{baseline.version}", run.info.run_id
    )
    return run.info.run_id, metrics


@scorer
def exact_match(outputs: str, expectations: dict[str, Any]) -> bool:
    """The candidate answered exactly as the baseline did."""
    return bool(outputs == expectations["expected_response"])


def _json_valid(recorded: Sequence[Recorded]) -> Scorer:
    """For inputs that asked for JSON: the candidate's answer is JSON (valid against the
    schema asked for); other inputs are not scored (None)."""
    schemas = {}
    for r in recorded:
        wanted = (r.input.get("params") or {}).get("output_format")
        if isinstance(wanted, dict):
            schemas[json.dumps(r.input, sort_keys=True)] = wanted.get("schema")

    @scorer(name="json_valid")
    def json_valid(inputs: dict[str, Any], outputs: str) -> bool | None:
        key = json.dumps(inputs, sort_keys=True)
        if key not in schemas:
            return None
        try:
            value = json.loads(outputs)
        except ValueError:
            return False
        schema = schemas[key]
        return _valid(value, json.loads(schema)) if isinstance(schema, str) else True

    return json_valid


def _valid(value: Any, schema: Any) -> bool:
    """Whether ``value`` is valid against ``schema`` (jsonschema comes with the llama.cpp
    extra; without it, being JSON is all that is checked)."""
    try:
        import jsonschema  # type: ignore[import-untyped]  # no stubs shipped
    except ImportError:
        return True
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError:
        return False
    return True


def _similarity(measure: Callable[[str, str], float]) -> Scorer:
    @scorer(name="similarity_to_baseline")
    def similarity(outputs: str, expectations: dict[str, Any]) -> float:
        """The cosine of the candidate's and the baseline's answers' embeddings."""
        return measure(outputs, expectations["expected_response"])

    return similarity


def _side_metrics(prefix: str, side: Side) -> dict[str, float]:
    latencies = sorted(side.latencies_s)
    tokens = [t for t in side.tokens if t is not None]
    failed = sum(t is None for t in side.texts)
    return {
        f"{prefix}_latency_p50_s": statistics.median(latencies) if latencies else math.nan,
        f"{prefix}_latency_max_s": latencies[-1] if latencies else math.nan,
        f"{prefix}_completion_tokens_mean": statistics.fmean(tokens) if tokens else math.nan,
        f"{prefix}_failed": float(failed),
    }
