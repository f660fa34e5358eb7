"""The request gate: the path of every call that touches a model or the registry, read top to
bottom in :class:`RequestGate`, its steps below the paths and the helpers below them.

A whole answer (:meth:`~RequestGate.run`) or a stream (:meth:`~RequestGate.open`): begin
accounting -> refuse while draining -> check limits -> locate -> the key's models -> route to
(task spec, engine)
-> admit -> check options, resolve the model, choose its handler, check capabilities -> run
-> account. Lookups and admin loads (:meth:`~RequestGate.gated`) take the same path with their own
work. From ``locate`` on it all runs within the request's deadline (504, the work cancelled);
whatever ends a call, :class:`~aiml.inference.accounting.Accounting` counts it exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from aiml.engines.base import Engine
from aiml.errors import AimlError, Draining, InvalidRequest, ModelNotFound
from aiml.observability.context import (
    note_response_header,
    request_affinity,
    request_deadline,
    request_started,
)
from aiml.observability.metrics import Metrics
from aiml.observability.stats import Stats
from aiml.observability.tracing import RequestTrace, Tracer
from aiml.teams.context import prices_of
from aiml.types import Generation, GenerationChunk, ModelRef, ResolvedModel, SamplingParams

from .accounting import Accounting, deadline_error
from .admission import Admission
from .key_rules import check_key
from .limits import Limits
from .request_traces import begin, output_text, served, shadow_recorder
from .router import Route, TaskRouter
from .shadow import Answer, ShadowTraffic, shadow_of
from .streams import OpenStream, StreamOutcome
from .tasks import TASK_SPECS, Handler
from .tasks.base import GenerativeHandler

__all__ = [
    "SERVED_VERSION_HEADER",
    "InferenceOutcome",
    "Locate",
    "RequestGate",
    "TaskCall",
]

T = TypeVar("T")
#: The registry version that served a response, on every surface (``name/version``).
SERVED_VERSION_HEADER = "x-aiml-model-version"
_TASKS = frozenset(t.value for t in TASK_SPECS)

#: Finds a call's (engine, model reference); may ask the registry.
Locate = Callable[[], Awaitable[tuple[str, ModelRef]]]


@dataclass(frozen=True, slots=True)
class TaskCall:
    """A validated call: the task's typed input, and how to find its engine and model."""

    task: str
    locate: Locate
    input: Any


@dataclass(frozen=True, slots=True)
class InferenceOutcome:
    resolved: ResolvedModel
    result: dict[str, Any]
    generation: Generation | None
    processing_time: float


class RequestGate:
    """Draining -> limits -> locate -> route -> admit -> resolve -> run, each call counted."""

    def __init__(
        self,
        router: TaskRouter,
        stats: Stats,
        *,
        limits: Limits,
        admission: Mapping[str, Admission],
        metrics: Metrics,
        request_timeout_s: float,
        tracer: Tracer | None = None,
    ) -> None:
        self.router = router
        self.stats = stats
        self.limits = limits
        self.admission = admission
        self.metrics = metrics
        self.request_timeout_s = request_timeout_s
        self.draining = False
        #: Copies of a share of an alias's requests to a candidate, compared off the path.
        self.shadow = ShadowTraffic()
        #: Which calls are traced (request_traces.py), and where their traces go.
        self.tracer = tracer

    async def run(self, call: TaskCall, *, counted: bool = False) -> InferenceOutcome:
        """The whole answer: locate, admit and run the call, within the deadline."""
        account, deadline_at = self._begin(call, counted)
        try:
            with account.owning_threads():  # its slot is held until they stop
                self._refuse_while_draining()
                self._check_limits(call.input)
                engine, ref = await _within(call.locate(), deadline_at)
                account.located(engine, self.router.engines, ref.name)
                check_key(ref, call.task)
                route = self.router.route(call.task, engine)
                await self._admit(engine, account, deadline_at)
                async with _until(deadline_at):  # resolving may fetch the model's files
                    resolved, handler = await self._resolve(route, ref, call.input, account)
                    result, generation = await self._answer(
                        route, handler, resolved, ref, call.input
                    )
        except BaseException as exc:
            account.settle(exc)
            raise
        if account.trace is not None and generation is None:
            account.trace.output = self._keep(output_text(result))
        account.finish(200, generation)
        elapsed = time.perf_counter() - account.started
        self._copy_to_shadow(
            ref, route, resolved, call.input, _answer_of(result, generation), elapsed,
            account.trace,
        )  # fmt: skip
        return InferenceOutcome(resolved, result, generation, processing_time=elapsed)

    async def open(self, call: TaskCall, *, counted: bool = False) -> StreamOutcome:
        """A stream: locate and admit the call and start the generation; chunks follow,
        and the stream's end counts the call (:class:`StreamOutcome`)."""
        account, deadline_at = self._begin(call, counted)
        try:
            with account.owning_threads():  # and again for each chunk (StreamOutcome)
                self._refuse_while_draining()
                self._check_limits(call.input)
                engine, ref = await _within(call.locate(), deadline_at)
                account.located(engine, self.router.engines, ref.name)
                check_key(ref, call.task)
                route = self.router.route(call.task, engine)
                await self._admit(engine, account, deadline_at)
                if not route.spec.streams:
                    raise InvalidRequest(
                        f"task {call.task!r} does not stream; leave out 'stream'", param="stream"
                    )
                async with _until(deadline_at):
                    resolved, handler = await self._resolve(route, ref, call.input, account)
                    opened = await self._start(route, handler, resolved, ref, call.input)
        except BaseException as exc:
            account.settle(exc)
            raise

        def copy_to_shadow(generation: Generation, elapsed: float) -> None:
            answer = Answer(generation.text, tokens=generation.completion_tokens)
            self._copy_to_shadow(ref, route, resolved, call.input, answer, elapsed, account.trace)

        return StreamOutcome(opened, account, deadline_at, self.metrics, on_finished=copy_to_shadow)

    async def gated(
        self,
        operation: str,
        locate: Locate,
        work: Callable[[str, ModelRef], Awaitable[T]],
        *,
        admit: bool = False,
    ) -> T:
        """``work(engine, ref)`` (a lookup, a load) through the gate: draining, the deadline
        and accounting, and with ``admit`` a slot of the engine's admission."""
        account, deadline_at = self._begin(None, counted=False, operation=operation)
        try:
            with account.owning_threads():
                self._refuse_while_draining()
                engine, ref = await _within(locate(), deadline_at)
                account.located(engine, self.router.engines, ref.name)
                check_key(ref)
                if admit:
                    await self._admit(engine, account, deadline_at)
                result = await _within(work(engine, ref), deadline_at)
        except BaseException as exc:
            account.settle(exc)
            raise
        account.finish(200)
        return result

    def validated(self, task: str, engine: str, validate: Callable[[], TaskCall]) -> TaskCall:
        """An ``/inference/infer`` request made a call by ``validate`` (its 422s, before any
        I/O), counted as started first so a refusal is counted too; pass the call on with
        ``counted=True``."""
        self.stats.started += 1
        try:
            return validate()
        except AimlError as exc:
            account = Accounting(self.stats, self.metrics, task, tasks=_TASKS)
            account.located(engine, self.router.engines)
            account.failed(exc)
            raise

    def deadline_at(self) -> float:
        """When the current request must be answered (the loop's clock): its arrival plus the
        service's timeout, or less if the client asked for less."""
        asked = request_deadline.get()
        timeout = min(asked, self.request_timeout_s) if asked else self.request_timeout_s
        started = request_started.get()
        return (started if started is not None else asyncio.get_running_loop().time()) + timeout

    # -- the steps, in the order the paths take them ---------------------------------------

    def _begin(
        self, call: TaskCall | None, counted: bool, operation: str = ""
    ) -> tuple[Accounting, float]:
        """A call's accounting, and its trace if it is served and sampled (named in the
        response's headers at once: it is chosen before the answer starts)."""
        if not counted:  # else counted as started before it was validated (validated)
            self.stats.started += 1
        trace = None
        if call is not None and self.tracer is not None:
            trace = begin(self.tracer, call.task, call.input)
        task = call.task if call is not None else operation
        account = Accounting(
            self.stats, self.metrics, task, tasks=_TASKS, trace=trace, tracer=self.tracer
        )
        return account, self.deadline_at()

    def _keep(self, text: str) -> str | None:
        return self.tracer.keep(text) if self.tracer is not None else None

    def _refuse_while_draining(self) -> None:
        if self.draining:
            raise Draining("the service is shutting down; retry on another instance")

    def _check_limits(self, request: Any) -> None:
        measure: Callable[[], Any] | None = getattr(request, "measure", None)
        if measure is not None:
            self.limits.check(measure())

    async def _admit(self, engine: str, account: Accounting, deadline_at: float) -> None:
        gate = self.admission.get(engine)
        if gate is None:
            self.router.engine(engine)  # the error naming the missing engine
            return
        await _within(gate.enter(), deadline_at)
        account.admitted(gate)

    async def _resolve(
        self, route: Route, ref: ModelRef, request: Any, account: Accounting
    ) -> tuple[ResolvedModel, Handler[Any]]:
        """The model ``ref`` means on the route's engine and the handler for that model
        (chosen per model, never kept); an option the engine cannot honour or a capability
        the model lacks is refused by name. A registry version is named in the response
        and counted in its own health."""
        _check_options(route.engine, request)
        affinity = request_affinity.get()  # a canary's choice sticks to its caller
        resolved = await self.router.resolver.resolve(ref, route.engine.name, affinity=affinity)
        if resolved.registry_name is not None and resolved.registry_version is not None:
            version = f"{resolved.registry_name}/{resolved.registry_version}"
            note_response_header(SERVED_VERSION_HEADER, version)
            account.served_by(version, prices_of(resolved.tags))
            if account.trace is not None:  # which arm of a canary: the alias's own version?
                stable = await self.router.resolver.version(ref) if ref.alias else None
                served(account.trace, ref, resolved, stable)
        handler = route.spec.handler_for(resolved)
        await self.router.capabilities.require(route.engine, resolved, route.spec.task, request)
        account.resolved()
        return resolved, handler

    async def _answer(
        self,
        route: Route,
        handler: Handler[Any],
        resolved: ResolvedModel,
        ref: ModelRef,
        request: Any,
    ) -> tuple[dict[str, Any], Generation | None]:
        """Run the handler: its ``result``, and the generation for generative tasks (the
        OpenAI and Ollama shapes need its counts)."""
        generation = None
        try:
            if isinstance(handler, GenerativeHandler):
                generation = await handler.generate(route.engine, resolved, request)
                result = handler.shape(resolved, generation)
            else:
                result = await handler.run(route.engine, resolved, request)
        except ModelNotFound:
            # The engine lost the model since we checked: look again next time.
            self.router.resolver.invalidate(ref)
            raise
        return result, generation

    async def _start(
        self,
        route: Route,
        handler: Handler[Any],
        resolved: ResolvedModel,
        ref: ModelRef,
        request: Any,
    ) -> OpenStream:
        """Start the generation and read its first chunk."""
        rest = handler.stream(route.engine, resolved, request)
        first: GenerationChunk | None
        try:
            first = await anext(rest)
        except StopAsyncIteration:
            first = None
        except ModelNotFound:
            self.router.resolver.invalidate(ref)
            raise

        def on_error(exc: BaseException) -> None:
            if isinstance(exc, ModelNotFound):
                self.router.resolver.invalidate(ref)

        return OpenStream(resolved, handler, first, rest, on_error)

    def _copy_to_shadow(
        self, ref: ModelRef, route: Route, resolved: ResolvedModel, request: Any,
        primary: Answer, elapsed: float, trace: RequestTrace | None,
    ) -> None:  # fmt: skip
        """After the caller's answer (a whole one, or a stream's end): a copy to the shadow
        the alias's version declares, if this request is in its share (shadow.py), run off
        the path as a whole answer, never counted; traced when the caller's request was."""
        if ref.alias is None or resolved.registry_version is None:
            return
        declared = shadow_of(resolved.tags, ref.alias, resolved.registry_version)
        if declared is None or not self.shadow.sampled(declared[1]):
            return
        candidate = ModelRef(ref.name, version=declared[0])

        async def copy() -> Answer:
            async with asyncio.timeout(self.request_timeout_s):
                model = await self.router.resolver.resolve(candidate, route.engine.name)
                handler = route.spec.handler_for(model)
                await self.router.capabilities.require(
                    route.engine, model, route.spec.task, request
                )
                result, generation = await self._answer(route, handler, model, candidate, request)
                return _answer_of(result, generation)

        record = None
        if trace is not None and self.tracer is not None:
            record = shadow_recorder(
                self.tracer, trace, declared[0], resolved.registry_version, primary, elapsed
            )
        key = f"{ref.name}@{ref.alias} -> {declared[0]}"
        self.shadow.offer(key, primary, elapsed, copy, record)


# -- helpers -----------------------------------------------------------------------------


def _answer_of(result: dict[str, Any], generation: Generation | None) -> Answer:
    if generation is not None:
        return Answer(generation.text, tokens=generation.completion_tokens)
    vectors = result.get("embeddings")
    if isinstance(vectors, list):
        return Answer("", vectors)
    return Answer(json.dumps(result, sort_keys=True, default=str))


def _check_options(engine: Engine, request: Any) -> None:
    """Refuse, by name, an option this engine cannot honour (never drop it silently)."""
    params = getattr(request, "params", None)
    if not isinstance(params, SamplingParams):
        return
    for option in sorted(params.options() - engine.extra_options):
        param = option
        if option == "output_format" and params.output_format is not None:
            param = params.output_format.param
        raise InvalidRequest(f"{param} is not supported by the {engine.name} engine", param=param)


@contextlib.asynccontextmanager
async def _until(deadline_at: float) -> AsyncIterator[None]:
    """Its block cancelled at the deadline (engines stop their work on cancellation)."""
    try:
        async with asyncio.timeout_at(deadline_at):
            yield
    except TimeoutError:
        raise deadline_error() from None


async def _within(work: Awaitable[T], deadline_at: float) -> T:
    """``work`` cancelled at the deadline."""
    async with _until(deadline_at):
        return await work
