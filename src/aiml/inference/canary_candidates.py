"""A canary declared in the registry directly is checked as aiml checks one it starts.

aiml refuses (409) to start a canary whose candidate cannot serve what the alias serves. A
pipeline that writes the canary's tag with ``MlflowClient`` skips that check, and the guard
would not catch what it lets through: a candidate without a chat template answers a 400,
which is the caller's error to the guard (it counts 5xx). So the resolver asks
:class:`CanaryCandidates` before it splits an alias's traffic: a candidate that is not
registered or is for another engine is no canary (logged); one that is, is checked
against the alias's version with the same ``vet`` a move's check uses, once per (alias,
version, candidate and the candidate's tags), waited for at most ``wait_s``, then in the
background (a pass looks the alias up again, so it splits). Until it passes the alias
serves its own version only; a refusal is logged once and listed in ``/inference/stats``
(``refused_canaries``). A check that meets an outage (status >= 502) is no verdict: tried
again at the next lookup. A check that fails otherwise (a bug) lets the canary run, as the
registry says, and logs the error.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from aiml.errors import AimlError, ModelNotFound
from aiml.types import ModelRef, RegistryVersion

from .alias_holds import Vet
from .alias_moves import Missing
from .canary import Canary
from .engine_models import engine_of

__all__ = ["CanaryCandidates"]

log = logging.getLogger("aiml.resolver")

_Key = tuple[str, str, int, int, tuple[tuple[str, str], ...]]


#: The registry's version for a reference (the resolver's lookup).
Find = Callable[[ModelRef], Awaitable[RegistryVersion | None]]


class CanaryCandidates:
    """Whether a canary's candidate may take its share of an alias's callers."""

    def __init__(self, vet: Vet | None, *, wait_s: float = 0.5, limit: int = 1024) -> None:
        """Without ``vet`` a registered candidate for the same engine passes unchecked."""
        self._vet = vet
        self._wait_s = wait_s
        self._limit = limit
        #: key -> what the candidate lacks (empty: it passed); LRU.
        self._verdicts: OrderedDict[_Key, list[Missing]] = OrderedDict()
        self._running: dict[_Key, asyncio.Task[list[Missing]]] = {}
        #: Checks a lookup is waiting for: their pass is that lookup's, no revisit.
        self._awaited: set[asyncio.Task[list[Missing]]] = set()

    async def find(
        self,
        alias: str,
        stable: RegistryVersion,
        canary: Canary,
        find: Find,
        revisit: Callable[[], None],
    ) -> RegistryVersion | None:
        """The candidate version ``canary`` of ``stable``'s ``alias`` names, if it may take
        its share now (else ``None``, and the alias serves ``stable`` alone)."""
        try:
            candidate = await find(ModelRef(stable.name, version=canary.version))
        except ModelNotFound:
            candidate = None
        if candidate is None or engine_of(candidate) != engine_of(stable):
            log.warning(
                "the canary of %s@%s names version %d, which is %s: not split",
                stable.name, alias, canary.version,
                "not registered" if candidate is None else "for another engine",
            )  # fmt: skip
            return None
        if self._vet is None or await self.passed(alias, stable, candidate, revisit):
            return candidate
        return None

    async def passed(
        self,
        alias: str,
        stable: RegistryVersion,
        candidate: RegistryVersion,
        revisit: Callable[[], None],
    ) -> bool:
        """Whether ``candidate`` can serve what ``stable`` serves for ``alias``; a check
        still running after ``wait_s`` calls ``revisit()`` when it passes."""
        key = (stable.name, alias, stable.version, candidate.version,
               tuple(sorted(candidate.tags.items())))  # fmt: skip
        verdict = self._verdicts.get(key)
        if verdict is None:
            task = self._running.get(key)
            if task is None:
                task = asyncio.ensure_future(self._vet_candidate(stable, candidate))
                self._running[key] = task
                task.add_done_callback(partial(self._done, key, revisit))
            self._awaited.add(task)
            try:  # the verdict is kept by the task's callback, which runs before this wakes
                await asyncio.wait({task}, timeout=self._wait_s)
            finally:
                self._awaited.discard(task)
            verdict = self._verdicts.get(key)
        else:
            self._verdicts.move_to_end(key)
        return verdict is not None and not verdict

    def report(self) -> list[dict[str, Any]]:
        return [
            {"name": name, "alias": alias, "stable": stable, "candidate": candidate,
             "missing": [m.as_dict() for m in missing]}
            for (name, alias, stable, candidate, _), missing in self._verdicts.items()
            if missing
        ]  # fmt: skip

    def close(self) -> None:
        for task in self._running.values():
            task.cancel()
        self._running.clear()

    async def _vet_candidate(
        self, stable: RegistryVersion, candidate: RegistryVersion
    ) -> list[Missing]:
        assert self._vet is not None  # find checks only with a vet
        return list(await self._vet(stable, candidate))

    def _done(
        self, key: _Key, revisit: Callable[[], None], task: asyncio.Task[list[Missing]]
    ) -> None:
        """Keep the check's verdict; a pass no lookup waited for looks the alias up again."""
        self._running.pop(key, None)
        if task.cancelled():
            return
        error = task.exception()
        if isinstance(error, AimlError) and error.status_code >= 502:
            return  # an outage says nothing of the candidate: asked again next lookup
        missing: list[Missing] = []
        if error is not None:
            log.error("checking the canary candidate %s failed; it runs as the registry "
                      "says", key[:4], exc_info=error)  # fmt: skip
        else:
            missing = task.result()
        if missing:
            log.warning(
                "the canary of %s@%s names version %d, which cannot serve what version %d "
                "serves: %s; not split", key[0], key[1], key[3], key[2],
                "; ".join(m.reason for m in missing),
            )  # fmt: skip
        self._verdicts[key] = missing
        while len(self._verdicts) > self._limit:
            self._verdicts.popitem(last=False)
        if not missing and task not in self._awaited:
            revisit()
