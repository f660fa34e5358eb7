"""Recorded requests asked again of a pinned registry version, through the request gate
(its admission, limits and deadline, as any request), at a bounded rate so the replay
never starves serving.

A recorded input is what a trace kept of a request (request_traces.py): chat ``messages``
or a ``prompt``, and the sampling ``params`` it asked with. Replays are sequential: the
rate is a ceiling, and a slow model slows the replay, not the service.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from aiml.errors import AimlError, InvalidRequest
from aiml.types import ModelRef, OutputFormat, Task

from .gate import TaskCall
from .manager import InferenceManager
from .tasks import TASK_SPECS

__all__ = ["Replayed", "call_for", "replay"]

#: The tasks a recorded input can be replayed as: the trace's field, the task's data field.
_REPLAYABLE = {"chat": ("messages", "messages"), "text-generation": ("prompt", "inputs")}


@dataclass(frozen=True, slots=True)
class Replayed:
    """One recorded input's answer from one version."""

    text: str | None  # None: it failed (``error`` says why)
    latency_s: float
    completion_tokens: int | None = None
    error: str | None = None


def call_for(
    manager: InferenceManager, ref: ModelRef, task: str, recorded: Mapping[str, Any]
) -> TaskCall:
    """The call that asks ``ref`` what ``recorded`` asked (a 400 naming what is missing)."""
    fields = _REPLAYABLE.get(task)
    if fields is None or fields[0] not in recorded:
        raise InvalidRequest(f"a recorded {task!r} request cannot be replayed", param="task")
    params = dict(recorded.get("params") or {})
    output_format = params.pop("output_format", None)
    spec = TASK_SPECS[Task(task)]
    request = spec.parse({fields[1]: recorded[fields[0]]}, params)
    if isinstance(output_format, dict):
        wanted = OutputFormat(schema=output_format.get("schema"))
        request = replace(request, params=replace(request.params, output_format=wanted))

    async def locate() -> tuple[str, ModelRef]:
        return await manager.router.resolver.engine_for(ref), ref

    return TaskCall(task, locate, request)


async def replay(
    manager: InferenceManager,
    ref: ModelRef,
    recorded: Sequence[tuple[str, Mapping[str, Any]]],
    *,
    per_second: float,
) -> list[Replayed]:
    """Each ``(task, input)`` of ``recorded`` asked of ``ref``, in order, at most
    ``per_second`` a second; a failure is a result (its error), not the replay's end."""
    answers: list[Replayed] = []
    spacing = 1.0 / per_second
    next_at = time.monotonic()
    for task, recorded_input in recorded:
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))  # the rate's ceiling
        next_at = time.monotonic() + spacing
        started = time.perf_counter()
        try:
            outcome = await manager.run(call_for(manager, ref, task, recorded_input))
        except AimlError as exc:
            answers.append(Replayed(None, time.perf_counter() - started, error=exc.message))
            continue
        generation = outcome.generation
        assert generation is not None  # the replayable tasks are generative
        answers.append(
            Replayed(generation.text, outcome.processing_time, generation.completion_tokens)
        )
    return answers
