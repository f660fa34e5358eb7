"""``aiml evaluate``: a candidate version asked what a registered model's recorded traffic
asked, beside its baseline, through aiml's own gate; the comparison logged in MLflow as an
evaluation run (registry/evaluation_runs.py).

The command's process serves nothing and traces nothing (its replays are not traffic); it
builds the engines the versions need and asks them at ``--rate`` requests a second at most,
so a shared engine (an Ollama server) is not starved.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Annotated, Any

import typer
from rich.table import Table

from aiml.settings import Settings

from .common import console, run

__all__ = ["evaluate"]

_SPAN = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def evaluate(
    name: Annotated[str, typer.Argument(help="Registered model")],
    candidate: Annotated[int, typer.Option(help="The candidate version")],
    baseline: Annotated[
        str, typer.Option(help="The baseline: @alias or a version number")
    ] = "@production",
    traces: Annotated[int, typer.Option(help="The last N recorded requests")] = 50,
    since: Annotated[
        str | None, typer.Option(help="Only requests recorded within this span, e.g. 1d, 6h")
    ] = None,
    rate: Annotated[float, typer.Option(help="Replayed requests a second, at most")] = 2.0,
    embedding_model: Annotated[
        str | None,
        typer.Option(help="A registered embedding model (e.g. emb@production): similarity"),
    ] = None,
    scorer: Annotated[
        list[str] | None, typer.Option(help="An MLflow scorer, module:attribute (repeatable)")
    ] = None,
    shadow: Annotated[
        bool,
        typer.Option(
            help="Log what NAME's shadow of the candidate recorded instead of replaying "
            "(the baseline is the version its copies were made beside)"
        ),
    ] = False,
) -> None:
    """Replay NAME's recorded requests (its traces in AIML_TRACE_EXPERIMENT) on the
    baseline and on the candidate version and log the comparison as an MLflow evaluation
    run: exact match, JSON validity, similarity, latency and tokens per version. With
    --shadow, nothing is replayed: the shadow's recorded pairs are compared."""
    since_ms = None
    if since is not None:
        match = re.fullmatch(r"(\d+)([smhd])", since)
        if match is None:
            raise typer.BadParameter("a span like 30m, 6h or 1d", param_hint="--since")
        span_s = int(match.group(1)) * _SPAN[match.group(2)]
        since_ms = int((time.time() - span_s) * 1000)
    settings = Settings().model_copy(update={"trace_sample": 0.0})
    run_id, metrics = run(
        lambda services: _evaluate(
            services, name, candidate, baseline, traces, since_ms, rate, embedding_model,
            scorer or [], shadow,
        ),
        settings,
    )  # fmt: skip
    table = Table("metric", "value")
    for key, value in sorted(metrics.items()):
        table.add_row(key, f"{value:.4g}")
    console.print(table)
    console.print(f"logged as MLflow run {run_id}")


async def _evaluate(
    services: Any,
    name: str,
    candidate: int,
    baseline: str,
    limit: int,
    since_ms: int | None,
    rate: float,
    embedding_model: str | None,
    scorers: list[str],
    shadow: bool,
) -> tuple[str, dict[str, float]]:
    from aiml.errors import InvalidRequest
    from aiml.registry.evaluation_records import experiment_name
    from aiml.registry.evaluation_runs import log_evaluation, shadow_pairs, user_scorer
    from aiml.registry.references import validate_registry_name

    settings: Settings = services.settings
    validate_registry_name(name, param="name")  # it goes into a search filter
    extra = [user_scorer(path) for path in scorers]
    if shadow:
        recorded, *sides = await asyncio.to_thread(
            shadow_pairs, settings.tracking_uri, settings.trace_experiment, name, candidate,
            limit=limit, since_ms=since_ms,
        )  # fmt: skip
        if not recorded:
            raise InvalidRequest(
                f"no recorded shadow copy of {name!r} version {candidate} with its input "
                "(a shadow tag, AIML_TRACE_SAMPLE, AIML_TRACE_CONTENT)",
                param="name",
            )
    else:
        recorded, sides = await _replayed(
            services, name, candidate, baseline, limit, since_ms, rate
        )
    sides = [await _with_model(services, name, side) for side in sides]
    similarity = None
    if embedding_model is not None:
        similarity = await _similarity(services, embedding_model, sides)
    return await asyncio.to_thread(
        log_evaluation, settings.tracking_uri, experiment_name(settings.trace_experiment),
        name, recorded, sides[0], sides[1], similarity=similarity, extra=extra,
        source="shadow" if shadow else "recorded",
    )  # fmt: skip


async def _with_model(services: Any, name: str, side: Any) -> Any:
    """``side`` with its version's logged model, which the run is linked to."""
    from dataclasses import replace

    from aiml.types import ModelRef

    found = await services.router.resolver.version(ModelRef(name, version=side.version))
    return replace(side, logged_model=found.logged_model if found is not None else None)


async def _replayed(
    services: Any,
    name: str,
    candidate: int,
    baseline: str,
    limit: int,
    since_ms: int | None,
    rate: float,
) -> tuple[list[Any], list[Any]]:
    """The recorded inputs of ``name`` and both versions' answers to them, asked again."""
    from aiml.errors import InvalidRequest
    from aiml.inference.replay import replay
    from aiml.registry.evaluation_runs import Side, recorded_inputs
    from aiml.types import ModelRef

    settings: Settings = services.settings
    base_ref = ModelRef(name, alias=baseline[1:]) if baseline.startswith("@") else None
    if base_ref is None and not baseline.isdigit():
        raise InvalidRequest("--baseline is @alias or a version number", param="baseline")
    found = await services.router.resolver.version(base_ref) if base_ref else None
    base_version = found.version if found is not None else int(baseline)
    recorded = await asyncio.to_thread(
        recorded_inputs, settings.tracking_uri, settings.trace_experiment, name,
        limit=limit, since_ms=since_ms,
    )  # fmt: skip
    if not recorded:
        raise InvalidRequest(
            f"no recorded request of {name!r} with its input (AIML_TRACE_SAMPLE, "
            "AIML_TRACE_CONTENT) to replay",
            param="name",
        )
    inputs = [(r.task, r.input) for r in recorded]
    sides = []
    for version in (base_version, candidate):
        answers = await replay(services.manager, ModelRef(name, version=version), inputs,
                               per_second=rate)  # fmt: skip
        texts = [a.text for a in answers]
        latencies = [a.latency_s for a in answers]
        sides.append(Side(version, texts, latencies, [a.completion_tokens for a in answers]))
    return recorded, sides


async def _similarity(services: Any, model: str, sides: list[Any]) -> Any:
    """The cosine of two answers' embeddings by ``model`` (embedded through the gate)."""
    from aiml.inference.gate import TaskCall
    from aiml.inference.shadow import cosine
    from aiml.inference.targets import openai_target
    from aiml.inference.tasks.embeddings import EmbeddingsInput

    texts = sorted({t for side in sides for t in side.texts if t})
    call = TaskCall(
        "embeddings", lambda: openai_target(services.router, model), EmbeddingsInput(tuple(texts))
    )
    outcome = await services.manager.run(call)
    vectors = dict(zip(texts, outcome.result["embeddings"], strict=True))

    def measure(a: str, b: str) -> float:
        return cosine(vectors[a], vectors[b]) if a in vectors and b in vectors else 0.0

    return measure
