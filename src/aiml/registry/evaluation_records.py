"""A registered model's evaluation runs (``aiml evaluate``, evaluation_runs.py), read back
from MLflow: which candidate against which baseline, when, the metrics of each side, the
scores comparing them, and a link to the run in MLflow's UI.

The runs are found by the tags evaluation_runs.py writes (``aiml.registered_model``,
``aiml.candidate_version``, ``aiml.baseline_version``) in the evaluations experiment, which
``aiml evaluate`` names after the trace experiment (:func:`experiment_name`). Their metrics
are split by name as evaluation_runs.py writes them: ``baseline_<m>`` and ``candidate_<m>``
are one side's (latency, tokens, failures), ``recorded_inputs`` the number of inputs, and
the rest are the scorers' aggregates over the rows (``exact_match/mean``, ...).

A run's page in MLflow's UI is ``<server>/#/experiments/<id>/runs/<run>``; there is none
when the tracking URI is not a server (an sqlite file).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Mapping
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from aiml.errors import RegistryError, RegistryUnavailable
from aiml.urls import redact

__all__ = ["EvaluationRecords", "evaluation_records", "experiment_name", "run_url"]

_SIDES = ("baseline", "candidate")
_INVALID = {"INVALID_PARAMETER_VALUE", "BAD_REQUEST"}


def experiment_name(trace_experiment: str) -> str:
    """The experiment ``aiml evaluate`` logs its runs in (cli/evaluate_command.py)."""
    return f"{trace_experiment}-evaluations"


def run_url(server: str, experiment_id: str, run_id: str) -> str | None:
    """The run's page in MLflow's UI; ``None`` when ``server`` is no HTTP server."""
    if not server.startswith(("http://", "https://")):
        return None
    return f"{redact(server).rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


@functools.lru_cache(maxsize=8)
def evaluation_records(tracking_uri: str, trace_experiment: str) -> EvaluationRecords:
    """One reader per tracking URI and experiment (its client and the experiment's id kept)."""
    return EvaluationRecords(tracking_uri, experiment_name(trace_experiment))


class EvaluationRecords:
    """Reads aiml's evaluation runs from MLflow at ``tracking_uri`` (blocking: call it in a
    thread); the experiment ``experiment`` is looked up until it exists, then kept.

    The client is made on first use, in that thread: on an sqlite URI making it opens the
    database (seconds, the first time), which must not happen on the event loop.
    """

    def __init__(self, tracking_uri: str, experiment: str) -> None:
        self._uri = tracking_uri
        self._client: MlflowClient | None = None
        self._experiment = experiment
        self._id: str | None = None
        self._lock = threading.Lock()

    def experiment_id(self) -> str | None:
        """The evaluations experiment's id; ``None`` while no evaluation has created it."""
        with self._lock:
            if self._id is None:
                found = self._call(self._mlflow().get_experiment_by_name, self._experiment)
                self._id = found.experiment_id if found is not None else None
            return self._id

    def recent(
        self,
        name: str,
        *,
        candidate: int | None = None,
        baseline: int | None = None,
        max_results: int = 10,
    ) -> tuple[str | None, list[dict[str, Any]]]:
        """The experiment's id and ``name``'s newest ``max_results`` evaluation runs,
        newest first (of ``candidate`` and against ``baseline`` where given). ``name`` goes
        into MLflow's filter: it must be a registry name (no quote)."""
        experiment = self.experiment_id()
        if experiment is None:
            return None, []
        clauses = [f"tags.`aiml.registered_model` = '{name}'"]
        if candidate is not None:
            clauses.append(f"tags.`aiml.candidate_version` = '{int(candidate)}'")
        if baseline is not None:
            clauses.append(f"tags.`aiml.baseline_version` = '{int(baseline)}'")
        runs = self._call(
            self._mlflow().search_runs,
            experiment_ids=[experiment],
            filter_string=" AND ".join(clauses),
            order_by=["attributes.start_time DESC"],
            max_results=max_results,
        )
        shown = (record(run, self._uri) for run in runs)
        return experiment, [r for r in shown if r is not None]

    def _mlflow(self) -> MlflowClient:
        if self._client is None:  # first made by experiment_id(), under its lock
            self._client = MlflowClient(tracking_uri=self._uri)
        return self._client

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MlflowException as exc:
            if exc.error_code in _INVALID:
                raise RegistryError(f"MLflow refused the runs search: {exc.message}") from exc
            raise RegistryUnavailable(
                f"MLflow did not answer about evaluations: {exc.message}"
            ) from exc


def record(run: Run, server: str) -> dict[str, Any] | None:
    """One evaluation run as ``GET /v1/evaluations`` shows it; ``None`` for a run that
    names no candidate or baseline version (not aiml's)."""
    tags = run.data.tags
    candidate, baseline = _version(tags, "candidate"), _version(tags, "baseline")
    if candidate is None or baseline is None:
        return None
    sides: dict[str, dict[str, float]] = {side: {} for side in _SIDES}
    scores: dict[str, float] = {}
    inputs = None
    for key, value in run.data.metrics.items():
        side, _, measure = key.partition("_")
        if side in sides and measure:
            sides[side][measure] = value
        elif key == "recorded_inputs":
            inputs = int(value)
        else:  # a scorer's aggregate: "exact_match/mean" is exact_match's mean over the rows
            scores[key.removesuffix("/mean")] = value
    shared = sides["baseline"].keys() & sides["candidate"].keys()
    info = run.info
    return {
        "run_id": info.run_id,
        "run_name": info.run_name,
        "experiment_id": info.experiment_id,
        "status": info.status,
        "start_time_ms": info.start_time,
        "end_time_ms": info.end_time,
        "registered_model": tags.get("aiml.registered_model"),
        "kind": tags.get("aiml.evaluation"),
        "candidate_version": candidate,
        "baseline_version": baseline,
        "recorded_inputs": inputs,
        "sides": sides,
        "delta": {m: sides["candidate"][m] - sides["baseline"][m] for m in sorted(shared)},
        "scores": scores,
        "run_url": run_url(server, info.experiment_id, info.run_id),
    }


def _version(tags: Mapping[str, str], side: str) -> int | None:
    value = tags.get(f"aiml.{side}_version", "")
    return int(value) if value.isdigit() else None
