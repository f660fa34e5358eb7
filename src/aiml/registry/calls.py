"""Blocking registry calls run off the event loop, each answered within a bounded time.

MLflow's client blocks, and for how long is not ours to choose: its sqlite store sets
``PRAGMA busy_timeout = 20000`` on every session (so a locked database stalls each call
20 s whatever the URI says), and its REST client waits ``MLFLOW_HTTP_REQUEST_TIMEOUT`` per
attempt. So the wait, not the call, is bounded: a call that has not answered within the
registry timeout is reported as :class:`RegistryUnavailable` and left to finish in its
thread. The threads are a small pool of the registry's own, so stalled calls cannot pile
up: at most ``threads`` are ever stuck, and calls queued behind them give up at their own
deadline without ever starting.

Until the registry has answered once, calls are waited for without this bound: the first
one builds MLflow's store, which for sqlite creates or migrates the schema (9 s measured on
a fresh file on a busy 2-core machine), and refusing that would refuse a registry that is
merely starting. MLflow's own bounds still apply to it.

MLflow's exceptions become ours here: an unreachable (or locked) registry is
:class:`RegistryUnavailable`, "does not exist" :class:`ModelNotFound` where the caller says
what was missing, a refused argument :class:`InvalidRequest` where it names the argument,
anything else :class:`RegistryError`. Nothing is swallowed into a guess.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import anyio.to_thread
from mlflow.exceptions import MlflowException

from aiml.errors import AimlError, InvalidRequest, ModelNotFound, RegistryError, RegistryUnavailable
from aiml.settings import Settings

__all__ = ["REGISTRY_RETRY_S", "RegistryCalls", "apply_http_bounds", "is_missing", "short"]

#: After a registry call failed, how soon the same question is asked again (the resolver per
#: reference, the model listing, readiness' engines): not on every request.
REGISTRY_RETRY_S = 1.0

T = TypeVar("T")
_UNAVAILABLE_CODES = {"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"}


def apply_http_bounds(settings: Settings) -> None:
    """Bound MLflow's REST client, whose defaults retry for minutes.

    MLflow reads these from the environment on every request and offers no per-client
    setting, so the only place to set them is the process environment. A value the operator
    set explicitly is kept.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(settings.registry_timeout_s))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(settings.registry_max_retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    # A download bar per model in the server log helps nobody; the CLI shows its own.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


class RegistryCalls:
    """Runs one registry's blocking calls; ``uri`` (credentials removed) is for messages."""

    def __init__(self, uri: str, *, timeout_s: float, threads: int) -> None:
        self._uri = uri
        self._timeout_s = timeout_s
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="aiml-registry")
        self._answered = False  # set by the worker thread when a first call has finished

    async def run(
        self,
        fn: Callable[..., T],
        *args: Any,
        bounded: bool = True,
        not_found: str | None = None,
        invalid: str | None = None,
    ) -> T:
        """``fn(*args)`` in a worker thread, its exceptions translated.

        ``bounded`` calls run in the pool and are waited for at most the timeout. The others
        (artifact uploads and downloads, registrations) run in anyio's threads for as long
        as they take: they move model files, and abandoning a write that may still land
        would make a retry register twice.
        """
        try:
            if not bounded:
                return await anyio.to_thread.run_sync(self._answering, fn, *args)
            return await self._within_timeout(fn, *args)
        except AimlError:
            raise
        except Exception as exc:
            raise self.translate(exc, not_found, invalid) from exc

    async def _within_timeout(self, fn: Callable[..., T], *args: Any) -> T:
        # The caller's context (request id for log lines) goes with the call, as anyio does.
        call = functools.partial(contextvars.copy_context().run, self._answering, fn, *args)
        # Cancelling this future (timeout, or the caller hanging up) drops the call if it is
        # still queued; one already running finishes in its thread, unobserved.
        future = asyncio.get_running_loop().run_in_executor(self._pool, call)
        deadline = asyncio.timeout(self._timeout_s if self._answered else None)
        try:
            async with deadline:
                return await future
        except TimeoutError:
            if not deadline.expired():  # raised by the call itself
                raise
            raise RegistryUnavailable(
                f"model registry at {self._uri} did not answer within {self._timeout_s:g} s"
            ) from None

    def _answering(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(*args)
        finally:
            self._answered = True

    def translate(self, exc: Exception, not_found: str | None, invalid: str | None) -> AimlError:
        if _is_unreachable(exc):
            return RegistryUnavailable(
                f"model registry at {self._uri} is unavailable: {short(exc)}"
            )
        if isinstance(exc, MlflowException) and is_missing(exc) and not_found is not None:
            return ModelNotFound(not_found)
        refused = isinstance(exc, ValueError) or (
            isinstance(exc, MlflowException) and exc.error_code == "INVALID_PARAMETER_VALUE"
        )
        if refused and invalid is not None:
            return InvalidRequest(f"{invalid}: {short(exc)}", param=invalid)
        return RegistryError(f"model registry at {self._uri} failed: {short(exc)}")


def is_missing(exc: MlflowException) -> bool:
    return bool(exc.error_code == "RESOURCE_DOES_NOT_EXIST")


def short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]


def _is_unreachable(exc: BaseException) -> bool:
    """True if the chain of causes shows a network failure, timeout or a locked database."""
    import requests
    import sqlalchemy.exc

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(
            current,
            requests.exceptions.ConnectionError
            | requests.exceptions.Timeout
            | requests.exceptions.RetryError
            | sqlalchemy.exc.OperationalError
            | ConnectionError
            | TimeoutError,
        ):
            return True
        if isinstance(current, MlflowException) and (
            current.error_code in _UNAVAILABLE_CODES
            or "failed with exception" in current.message
            or "failed with timeout" in current.message
        ):
            return True
        current = current.__cause__ or current.__context__
    return False
