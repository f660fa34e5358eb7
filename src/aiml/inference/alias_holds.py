"""An alias moved in the registry to a version that cannot serve stays on its last good one.

aiml checks a move made through it before making it (:mod:`.alias_moves`, 409). A move made
in MLflow directly (a pipeline's ``set_registered_model_alias``) is only seen when the
resolver reads the alias again; :class:`AliasHolds` is how the resolver then checks it,
with the same check (the ``vet`` it is given is :meth:`AliasMoves.missing`):

* Each alias reference remembers its last good version, apart from the resolver's entries
  (an invalidation drops those; this outlives it), at most ``limit`` aliases (LRU).
* When the registry names another version, it is checked against the last good one in the
  background, once per version (and again when its tags change, or the last good one does),
  never per request. Until the verdict the alias serves its last good version; a version
  that passes is served at once (the resolver looks the alias up again), one that fails is
  held off: the last good version serves on, the hold is logged (a WARNING, once per
  refused version), counted and shown (:class:`~aiml.observability.held_aliases.HeldAliases`:
  ``/inference/stats``' ``held_aliases``, ``aiml_alias_held`` in ``/metrics``).
* The alias recovers by itself: once it names the last good version again, or a version
  that passes, that version serves and the hold ends.
* A check that meets an outage (status >= 502: the registry or an engine down) says nothing
  about the version. The target is then checked alone (can it serve at all? the current
  version's engine may be the one down, which is why it was moved): a pass serves it; an
  outage there too keeps the last good version, shown as an unchecked hold, and checks again
  at the alias's next lookup (each TTL, or at once after a webhook), so it never holds for
  longer than the outage. A check that fails otherwise (a bug) serves the registry's
  version, as before this existed, and logs the error.
* A brand-new alias (nothing served yet) is served as the registry says, and so is a version
  tagged ``aiml.forced.<alias>`` (a move forced on purpose). Pinned versions and "latest"
  are no aliases: never held. The memory is per process: a restarted front serves what the
  registry names.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from functools import partial

from aiml.errors import AimlError
from aiml.observability.held_aliases import HeldAliases, Hold
from aiml.types import ModelRef, RegistryVersion

from .alias_moves import Missing

__all__ = ["AliasHolds", "Vet", "forced_tag"]

log = logging.getLogger("aiml.resolver")

#: What ``target`` lacks to serve what ``current`` serves (``None``: to serve at all).
Vet = Callable[[RegistryVersion | None, RegistryVersion], Awaitable[Sequence[Missing]]]
#: A verdict: what the version lacks, and whether the check could run at all.
_Verdict = tuple[list[Missing], bool]


def forced_tag(alias: str) -> str:
    """The version tag that says a move of ``alias`` onto this version was forced."""
    return f"aiml.forced.{alias}"


class AliasHolds:
    """Per alias reference: its last good version, the check of a new one, its hold."""

    def __init__(
        self,
        vet: Vet,
        held: HeldAliases | None = None,
        *,
        wait_s: float = 0.5,
        limit: int = 1024,
    ) -> None:
        self._vet = vet
        self._wait_s = wait_s
        self.held = held if held is not None else HeldAliases(limit)
        self._limit = limit
        self._good: OrderedDict[ModelRef, RegistryVersion] = OrderedDict()
        #: ref -> (the last good version's number, the version refused against it).
        self._refused: dict[ModelRef, tuple[int, RegistryVersion]] = {}
        #: ref -> (the same pair, the check running for it).
        self._vetting: dict[ModelRef, tuple[int, RegistryVersion, asyncio.Future[_Verdict]]] = {}
        #: Checks a lookup is waiting for: their verdict is that lookup's, no revisit.
        self._awaited: set[asyncio.Future[_Verdict]] = set()

    def good(self, ref: ModelRef) -> RegistryVersion | None:
        """The last version ``ref`` served that was found good."""
        return self._good.get(ref)

    async def serve(
        self,
        ref: ModelRef,
        named: RegistryVersion,
        *,
        current: bool,
        revisit: Callable[[ModelRef], None],
    ) -> RegistryVersion:
        """The version alias ``ref`` serves now that the registry names ``named``. A new
        version is checked, waited for at most ``wait_s`` (a check of cached files or of a
        server's model answers well within it, so a good move serves at once); a check that
        takes longer (a download) goes on, the last good version serving meanwhile, and its
        pass calls ``revisit(ref)``. A lookup no longer ``current`` (invalidated since) only
        reads: what it read predates the change."""
        assert ref.alias is not None
        good = self._good.get(ref)
        if good is None or good.version == named.version or named.tag(forced_tag(ref.alias)):
            if current:
                self._keep(ref, named)
            return named
        if not current:
            return good
        self._good.move_to_end(ref)
        refused = self._refused.get(ref)
        if refused is not None and refused[0] == good.version and _same(refused[1], named):
            return good  # refused before, as it is now: the verdict stands
        vetting = self._vetting.get(ref)
        task: asyncio.Future[_Verdict]
        if vetting is None or vetting[0] != good.version or not _same(vetting[1], named):
            if vetting is not None:
                vetting[2].cancel()
            task = asyncio.ensure_future(self._check(good, named))
            self._vetting[ref] = (good.version, named, task)
            task.add_done_callback(partial(self._vetted, ref, revisit))
        else:
            task = vetting[2]
        self._awaited.add(task)
        try:  # the verdict is applied by its callback, which runs before this wakes
            await asyncio.wait({task}, timeout=self._wait_s)
        finally:
            self._awaited.discard(task)
        now = self._good.get(ref)
        return named if now is not None and _same(now, named) else good

    def close(self) -> None:
        """Stop the checks running (shutdown)."""
        for _, _, task in self._vetting.values():
            task.cancel()
        self._vetting.clear()

    # -- internals ---------------------------------------------------------------------

    async def _check(self, good: RegistryVersion, named: RegistryVersion) -> _Verdict:
        try:
            return list(await self._vet(good, named)), True
        except AimlError as exc:
            if exc.status_code < 502:
                raise
        # Either version may be the unreadable one; the target alone says whether it can
        # serve at all (a current version that cannot be read serves nothing now either).
        try:
            return list(await self._vet(None, named)), True
        except AimlError as exc:
            if exc.status_code < 502:
                raise
            reason = f"version {named.version} could not be checked: {exc.message}"
            return [Missing("unavailable", exc.code, reason)], False

    def _vetted(
        self, ref: ModelRef, revisit: Callable[[ModelRef], None], task: asyncio.Future[_Verdict]
    ) -> None:
        """Apply a check's verdict, if it is still the check for ``ref``."""
        vetting = self._vetting.get(ref)
        if vetting is None or vetting[2] is not task:
            return  # superseded: the alias moved again, or back
        del self._vetting[ref]
        if task.cancelled():
            return
        number, named = vetting[0], vetting[1]
        error = task.exception()
        missing: list[Missing]
        if error is not None:
            log.error(
                "checking %s version %d against version %d failed; it is served as the "
                "registry says", ref, named.version, number, exc_info=error,
            )  # fmt: skip
            missing, checked = [], True
        else:
            missing, checked = task.result()
        if not missing:
            self._keep(ref, named)
            if task not in self._awaited:  # else the lookup waiting for it serves it
                revisit(ref)
            return
        if checked:
            self._refused[ref] = (number, named)
        key = str(ref)
        hold = Hold(key, number, named.version, tuple(m.as_dict() for m in missing), checked)
        before = self.held.get(key)
        if before is not None and before.refused == named.version:
            self.held.hold(replace(hold, since=before.since))
            if before.checked == checked:
                return  # said already: once per refused version
        else:
            self.held.hold(hold)
        reasons = "; ".join(m.reason for m in missing)
        if checked:
            log.warning(
                "%s now names version %d, which cannot serve what version %d serves: %s; "
                "version %d serves on until the alias names a version that can",
                ref, named.version, number, reasons, number,
            )  # fmt: skip
        else:
            log.warning(
                "%s now names version %d, which could not be checked (%s); version %d serves "
                "on, and it is checked again at the alias's next lookup",
                ref, named.version, reasons, number,
            )  # fmt: skip

    def _keep(self, ref: ModelRef, version: RegistryVersion) -> None:
        """``version`` is ``ref``'s good one now: any check or hold of another one ends."""
        self._good[ref] = version
        self._good.move_to_end(ref)
        self._refused.pop(ref, None)
        vetting = self._vetting.pop(ref, None)
        if vetting is not None:
            vetting[2].cancel()
        ended = self.held.release(str(ref))
        if ended is not None:
            log.warning(
                "%s names version %d, which serves: the hold on version %d (refusing "
                "version %d) ended", ref, version.version, ended.serving, ended.refused,
            )  # fmt: skip
        while len(self._good) > self._limit:
            self._forget(next(iter(self._good)))

    def _forget(self, ref: ModelRef) -> None:
        del self._good[ref]
        self._refused.pop(ref, None)
        vetting = self._vetting.pop(ref, None)
        if vetting is not None:
            vetting[2].cancel()
        self.held.release(str(ref))


def _same(a: RegistryVersion, b: RegistryVersion) -> bool:
    """The same version with the same tags (its aliases may differ: they say nothing of it)."""
    return a.version == b.version and a.tags == b.tags and a.model_tags == b.model_tags
