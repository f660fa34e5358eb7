"""Where a call's passage through the request gate (:mod:`.gate`) lands: counted exactly
once, its admission slot given back once.

:class:`Accounting` counts a call's outcome in the stats and metrics, whatever ends it (an
answer, an error, a client hanging up, a bug), and owns the worker threads engines start
for it; the gate calls it at each step of its path.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from aiml.engines.threads import RunningThreads, request_threads
from aiml.errors import AimlError, DeadlineExceeded
from aiml.observability.metrics import Metrics
from aiml.observability.stats import Stats
from aiml.observability.tracing import RequestTrace, Tracer
from aiml.teams.context import request_usage
from aiml.types import Generation

from .admission import Admission
from .request_traces import complete

if TYPE_CHECKING:
    from collections.abc import Collection

__all__ = ["Accounting", "deadline_error"]

#: Gated operations that are not tasks (their label in stats and metrics).
OPERATIONS = frozenset({"lookup", "load", "unload"})


class Accounting:
    """Where one call's outcome is counted (stats, metrics) and its admission slot given back:
    once the call is over and its worker threads (:attr:`threads`) have stopped."""

    def __init__(
        self,
        stats: Stats,
        metrics: Metrics,
        task: str,
        *,
        tasks: Collection[str],
        trace: RequestTrace | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        """``trace``: the call's, if it is traced; ``tracer`` takes it once it is complete."""
        self.task = task if task in tasks or task in OPERATIONS else "unknown"
        self.engine = "-"  # until the call's engine is known
        self.model = "-"  # until the call's model reference is known
        self.started = trace.start if trace is not None else time.perf_counter()
        self.trace = trace
        self._tracer = tracer
        #: When the call was located, admitted, resolved (perf_counter; traced calls only).
        self._marks: dict[str, float] = {}
        self._stats = stats
        self._metrics = metrics
        self._gate: Admission | None = None
        self._done = False
        self.threads = RunningThreads()
        self.version: str | None = None  # until a registry version answers it
        self.first_token_s: float | None = None
        #: The request's usage, where its key's is counted (the Quotas middleware's).
        self._usage = request_usage.get()

    @contextlib.contextmanager
    def owning_threads(self) -> Iterator[None]:
        """Inside, the worker threads engines start in this task are this call's
        (:attr:`threads`); after, no longer: the task goes on (a keep-alive connection's next
        request, tasks spawned from it) without this call's threads, whatever ended it."""
        token = request_threads.set(self.threads)
        try:
            yield
        finally:
            request_threads.reset(token)

    def located(self, engine: str, engines: Collection[str], model: str = "-") -> None:
        self.engine = engine if engine in engines else "unknown"
        self.model = model
        if self._usage is not None:
            self._usage.model = model
        self._mark("locate")

    def admitted(self, gate: Admission) -> None:
        self._gate = gate
        self._mark("queue")

    def resolved(self) -> None:
        """The model is found (and loaded): the engine is asked next."""
        self._mark("resolve")

    def _mark(self, step: str) -> None:
        if self.trace is not None:
            self._marks[step] = time.perf_counter()

    def served_by(self, version: str, prices: tuple[float, float] = (0.0, 0.0)) -> None:
        """The registry version (``name/3``) answering the call: its health counts it, and
        its prices (per million input and output tokens) its usage."""
        self.version = version
        if self._usage is not None:
            self._usage.version = version.rpartition("/")[2]
            self._usage.input_price, self._usage.output_price = prices

    def first_token(self) -> float:
        """The call's first generated text is out now: seconds since it arrived."""
        self.first_token_s = time.perf_counter() - self.started
        return self.first_token_s

    def finish(self, status: int, generation: Generation | None = None) -> None:
        if self._done:
            return
        self._done = True
        if self._gate is not None:
            self.threads.when_idle(self._gate.leave)
        stats = self._stats
        stats.finished[(self.task, self.engine, status)] += 1
        stats.by_model[(self.model if status != 404 else "-", status)] += 1
        if generation is not None and generation.completion_tokens:
            stats.tokens[(self.task, self.engine)] += generation.completion_tokens
        if generation is not None and self._usage is not None:
            self._usage.input_tokens += generation.prompt_tokens or 0
            self._usage.output_tokens += generation.completion_tokens or 0
        elapsed = time.perf_counter() - self.started
        self._metrics.request_duration.labels(self.task, self.engine).observe(elapsed)
        if self.version is not None:
            tokens = (generation.completion_tokens or 0) if generation is not None else 0
            stats.versions.record(
                self.version, status, elapsed, first_token_s=self.first_token_s, tokens=tokens
            )
        if self.trace is not None and self._tracer is not None:
            complete(
                self.trace, task=self.task, engine=self.engine, model=self.model, status=status,
                generation=generation, marks=self._marks, first_token_s=self.first_token_s,
                end=self.started + elapsed, keep=self._tracer.keep,
            )  # fmt: skip
            self._tracer.submit(self.trace)

    def failed(self, exc: AimlError) -> None:
        if self._done:
            return
        self._stats.errors[exc.code] += 1
        if exc.code in ("overloaded", "draining"):
            self._stats.rejected[exc.code] += 1
        self.finish(exc.status_code)

    def cancelled(self) -> None:
        if self._done:
            return
        self._stats.cancelled += 1
        self.finish(499)  # nginx's "client closed request"

    def crashed(self) -> None:
        """A bug, not an answer: still counted, and the slot still given back."""
        if self._done:
            return
        self._stats.errors["internal_error"] += 1
        self.finish(500)

    def settle(self, exc: BaseException) -> None:
        """Count the call as ended by ``exc``."""
        if isinstance(exc, AimlError):
            self.failed(exc)
        elif isinstance(exc, (GeneratorExit, asyncio.CancelledError)):
            self.cancelled()  # the client hung up
        else:
            self.crashed()


def deadline_error() -> DeadlineExceeded:
    return DeadlineExceeded(
        "the request's deadline passed; its work was cancelled (AIML_REQUEST_TIMEOUT_S, "
        "or X-Request-Timeout)"
    )
