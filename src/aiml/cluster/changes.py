"""Registry changes (and changes of keys) made through one front, seen by every front at once.

A change made through aiml's admin routes (register, alias, delete) invalidates that
front's cached resolutions synchronously. The other fronts learn of it through a small
named Ray actor, a change log they long-poll: within milliseconds, rather than after
``AIML_RESOLVE_TTL_S``. Chosen over a short shared TTL because a TTL short enough to feel
"at once" would cost every front a registry call per reference every few hundred
milliseconds, while the log costs one idle long-poll per front. Changes made in MLflow
directly (another tool moving an alias) are still seen within the TTL, as in
single-process mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import ray

__all__ = ["ChangeFeed"]

log = logging.getLogger("aiml.cluster")

#: How long one long-poll waits for news before asking again (seconds).
_POLL_S = 30.0
#: The entry saying keys changed: never a registry name (MLflow's have no ':').
_KEYS = "aiml:keys"
#: How many recent changes the log keeps (a front further behind invalidates everything).
_KEEP = 1000


@ray.remote(num_cpus=0)
class ChangeLog:
    """The cluster's log of registered model names changed through aiml."""

    def __init__(self) -> None:
        self._seq = 0
        self._names: list[tuple[int, str]] = []
        self._news = asyncio.Event()

    async def publish(self, name: str) -> int:
        self._seq += 1
        self._names = [*self._names[-(_KEEP - 1) :], (self._seq, name)]
        self._news.set()
        self._news = asyncio.Event()
        return self._seq

    async def since(self, seq: int, wait_s: float) -> tuple[int, list[str] | None]:
        """Names changed after ``seq`` (``None``: too far behind, forget everything)."""
        if self._seq == seq:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._news.wait(), wait_s)
        if self._names and self._names[0][0] > seq + 1:
            return self._seq, None
        return self._seq, [name for n, name in self._names if n > seq]


class ChangeFeed:
    """A front's side of the change log: publish its changes, apply the others'."""

    def __init__(
        self,
        app: str,
        on_change: Callable[[str | None], None],
        on_keys: Callable[[], None] = lambda: None,
    ) -> None:
        self._app = app
        self._log: Any = self._join()
        self._on_change = on_change
        self._on_keys = on_keys
        self._task: asyncio.Task[None] | None = None

    def _join(self) -> Any:
        """The cluster's change log, made if no front made it yet (or it was lost). On the
        head node: a worker node's loss must not take the log with it (blocking)."""
        return ChangeLog.options(  # type: ignore[attr-defined]
            name=f"{self._app}-changes",
            namespace="aiml",
            lifetime="detached",
            get_if_exists=True,
            resources={"node:__internal_head__": 0.001},
        ).remote()

    def publish(self, name: str) -> None:
        self._log.publish.remote(name)  # fire and forget; the feed applies it here too

    def publish_keys(self) -> None:
        """Keys or teams changed through this front: every front reads them again."""
        self._log.publish.remote(_KEYS)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._follow())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow(self) -> None:
        seq: int | None = None
        broken = False
        while True:
            try:
                if seq is None:  # (re)joining: start from now
                    seq, _ = await self._log.since.remote(-1, 0)
                    if broken:  # what changed while away is unknown: forget it all, once
                        self._on_change(None)
                        broken = False
                    continue
                seq, names = await self._log.since.remote(seq, _POLL_S)
            except ray.exceptions.RayError as exc:  # the actor died or the head is away
                if not broken:
                    log.warning("registry change feed interrupted: %s", exc)
                broken = True
                seq = None
                await asyncio.sleep(1.0)
                with contextlib.suppress(ray.exceptions.RayError):  # join it again, or make it
                    self._log = await asyncio.to_thread(self._join)
                continue
            for name in names if names is not None else [None]:
                if name == _KEYS or name is None:
                    self._on_keys()
                if name != _KEYS:
                    self._on_change(name)
