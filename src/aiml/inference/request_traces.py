"""What a served request's trace says, filled in when the call ends (:class:`Accounting`).

Spans from the times the gate marked: ``locate`` (the reference's engine, which may ask
the registry), ``queue`` (waiting for the engine's admission), ``resolve`` (the model the
reference means, loaded if need be), ``engine`` (the answer), and under it ``prefill``
(until the first token) and ``generation`` where the first token's time is known (streams,
and local engines' whole answers). Attributes in OpenTelemetry's GenAI terms, with the
registry's name, version and alias both as attributes and as MLflow trace tags.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aiml.observability.context import note_response_header, request_caller, request_path
from aiml.observability.tracing import TRACE_HEADER, RequestTrace, Tracer, TraceSpan
from aiml.types import Generation, ModelRef, RegistryVersion, ResolvedModel, SamplingParams

from .shadow import Answer, Record

__all__ = ["begin", "complete", "input_of", "output_text", "served", "shadow_recorder"]

#: The task as GenAI's ``gen_ai.operation.name`` says it.
_OPERATIONS = {"chat": "chat", "text-generation": "text_completion", "embeddings": "embeddings"}


def begin(tracer: Tracer, task: str, request: Any) -> RequestTrace | None:
    """A trace for a call starting now, if it falls in the sample: named in the response's
    headers at once (it is chosen before the answer starts), with its input, surface and
    caller."""
    trace = tracer.start(task)
    if trace is None:
        return None
    note_response_header(TRACE_HEADER, trace.mlflow_id)
    if tracer.content != "none":
        trace.input = input_of(request, tracer.keep)
    trace.attributes["aiml.surface"] = surface_of(request_path.get())
    if (caller := request_caller.get()) is not None:
        trace.attributes["aiml.key_name"] = caller
        trace.attributes["user.id"] = caller  # OpenTelemetry's; MLflow shows it as the user
    return trace


def served(
    trace: RequestTrace, ref: ModelRef, resolved: ResolvedModel, stable: RegistryVersion | None
) -> None:
    """The registry version a traced call is served by, as attributes and MLflow trace tags
    (searchable); under an alias, which arm of its canary (``stable``: the alias's own
    version, as the resolver holds it)."""
    trace.attributes["gen_ai.request.model"] = str(ref)  # as the caller named it
    trace.attributes["gen_ai.response.model"] = resolved.engine_model
    tags = {
        "aiml.model_version": f"{resolved.registry_name}/{resolved.registry_version}",
        "aiml.registered_model": ref.name,
    }
    if ref.alias is not None:
        tags["aiml.alias"] = ref.alias
        on_stable = stable is None or stable.version == resolved.registry_version
        tags["aiml.arm"] = "stable" if on_stable else "candidate"
    trace.tags.update(tags)
    trace.attributes.update(tags)
    trace.logged_model = resolved.logged_model


def shadow_recorder(
    tracer: Tracer, primary: RequestTrace, candidate: int, primary_version: int,
    primary_answer: Answer, primary_s: float,
) -> Record:  # fmt: skip
    """What records a shadow's copy of the traced request ``primary``: a trace of its own,
    made when the copy ends, for the candidate's version (tag ``aiml.arm`` = ``shadow``,
    ``aiml.shadow_of`` the primary's trace), holding the pair an evaluation compares: the
    input, the candidate's answer as output, and what the caller got (its version, answer,
    seconds and tokens) as attributes. It carries ``aiml.shadowed_model``, not
    ``aiml.registered_model``: a copy is not traffic to replay (evaluation_runs.py)."""
    name = primary.tags.get("aiml.registered_model", "")
    keep = tracer.keep

    def record(answer: Answer | None, seconds: float, status: int) -> None:
        trace = RequestTrace(primary.name)
        trace.end, trace.start = trace.start, trace.start - seconds  # it ended just now
        trace.start_ns -= int(seconds * 1e9)
        trace.status = status
        trace.input = primary.input
        tags = {
            "aiml.model_version": f"{name}/{candidate}",
            "aiml.shadowed_model": name,
            "aiml.alias": primary.tags.get("aiml.alias", ""),
            "aiml.arm": "shadow",
            "aiml.shadow_of": primary.mlflow_id,
        }
        trace.tags.update(tags)
        attributes = trace.attributes
        attributes.update(tags)
        for key in ("aiml.task", "gen_ai.operation.name", "gen_ai.provider.name"):
            if key in primary.attributes:
                attributes[key] = primary.attributes[key]
        attributes.update({
            "aiml.surface": "shadow",
            "http.response.status_code": status,
            "aiml.primary.version": primary_version,
            "aiml.primary.latency_s": round(primary_s, 6),
        })  # fmt: skip
        if (kept := keep(primary_answer.text)) is not None:
            attributes["aiml.primary.output"] = kept
        if primary_answer.tokens is not None:
            attributes["aiml.primary.output_tokens"] = primary_answer.tokens
        if answer is not None:
            trace.output = keep(answer.text)
            if answer.tokens is not None:
                attributes["gen_ai.usage.output_tokens"] = answer.tokens
        tracer.submit(trace)

    return record


def surface_of(path: str | None) -> str:
    """Which of aiml's APIs a path is on."""
    if path is None:
        return "internal"
    if path.startswith("/v1/"):
        return "openai"
    if path.startswith("/api/"):
        return "ollama"
    return "aiml"


def input_of(request: Any, keep: Callable[[str], str | None]) -> Any:
    """A request's input as a trace shows it (JSON-able; each text as much as ``keep``
    keeps, so a truncated input is still valid JSON): chat messages, a prompt, texts."""
    found: dict[str, Any] = {"input": type(request).__name__}
    messages = getattr(request, "messages", None)
    if messages is not None:
        found = {"messages": [{"role": m.role, "content": keep(m.content)} for m in messages]}
    for name in ("prompt", "inputs", "texts", "text"):
        value = getattr(request, name, None)
        if isinstance(value, str):
            found = {name: keep(value)}
        elif isinstance(value, (list, tuple)):
            found = {name: [keep(str(v)) for v in value[:100]]}
    params = getattr(request, "params", None)
    if isinstance(params, SamplingParams):  # what a replay needs to ask the same
        found["params"] = _params(params)
    return found


def _params(params: SamplingParams) -> dict[str, Any]:
    kept: dict[str, Any] = {
        name: getattr(params, name)
        for name in ("max_tokens", "temperature", "top_p", "top_k", "seed", "repeat_penalty")
        if getattr(params, name) is not None
    }
    if params.stop:
        kept["stop"] = list(params.stop)
    if params.output_format is not None:
        kept["output_format"] = {"schema": params.output_format.schema}
    return kept


def output_text(result: dict[str, Any]) -> str:
    """A non-generative answer as a trace shows it (its vectors counted, not written)."""
    vectors = result.get("embeddings")
    if isinstance(vectors, list):
        return f"{len(vectors)} embeddings"
    return json.dumps(result, ensure_ascii=False, default=str)


def complete(
    trace: RequestTrace,
    *,
    task: str,
    engine: str,
    model: str,
    status: int,
    generation: Generation | None,
    marks: dict[str, float],
    first_token_s: float | None,
    end: float,
    keep: Callable[[str], str | None],
) -> None:
    """Fill in ``trace`` for a call that ended at ``end`` (perf_counter) with ``status``;
    a generation's text is its output, as much of it as ``keep`` keeps."""
    trace.end = end
    trace.status = status
    operation = _OPERATIONS.get(task, task)
    attributes = trace.attributes
    requested = attributes.setdefault("gen_ai.request.model", model)
    trace.name = f"{operation} {requested}"
    attributes.update({
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": engine,
        "http.response.status_code": status,
        "aiml.task": task,
    })  # fmt: skip
    if generation is not None:
        if trace.output is None:
            trace.output = keep(generation.text)
        if generation.prompt_tokens is not None:
            attributes["gen_ai.usage.input_tokens"] = generation.prompt_tokens
        if generation.completion_tokens is not None:
            attributes["gen_ai.usage.output_tokens"] = generation.completion_tokens
        if generation.finish_reason:
            attributes["gen_ai.response.finish_reasons"] = generation.finish_reason
    at = trace.start
    for name in ("locate", "queue", "resolve"):
        mark = marks.get(name)
        if mark is not None:
            trace.add(TraceSpan(name, at, mark))
            at = mark
    if "resolve" not in marks:
        return  # it ended before an engine was asked
    trace.add(TraceSpan("engine", at, end))
    first = _first_token(trace, generation, first_token_s)
    if first is not None and at <= first <= end:
        trace.add(TraceSpan("prefill", at, first, parent="engine"))
        trace.add(TraceSpan("generation", first, end, parent="engine"))


def _first_token(
    trace: RequestTrace, generation: Generation | None, first_token_s: float | None
) -> float | None:
    """When the first token came out (perf_counter): a stream's own mark, else what the
    engine reported (local engines' wall-clock time, crossing a cluster)."""
    if first_token_s is not None:
        return trace.start + first_token_s
    unix = generation.engine_metadata.get("first_token_unix") if generation else None
    if isinstance(unix, float):
        return trace.start + (unix - trace.start_ns / 1e9)
    return None
