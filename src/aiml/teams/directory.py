"""A front's view of the keys: every key by digest in memory, read again when the keys
change anywhere.

A request's key is one dict lookup. A digest not held here is looked up in the database
once (a key created through another front works at once), and remembered as unknown for
``refresh_s`` (a client trying random keys costs at most one query per key per interval).
A change made through this front is applied at once (:meth:`changed`); one made through
another front is seen when this front next polls the revision (every ``refresh_s``) or, in
cluster mode, at once through the change feed, which calls :meth:`changed` too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .key_store import KeyStore
from .keys import ApiKey, Role, Team, secret_digest

__all__ = ["KeyDirectory", "Lookup", "environment_keys"]

log = logging.getLogger("aiml.keys")
#: At most this many unknown digests are remembered (then the memory starts over).
_MAX_UNKNOWN = 10_000


@dataclass(frozen=True, slots=True)
class Lookup:
    """What a digest is: a usable key, a key that no longer works (and why), or nothing."""

    key: ApiKey | None
    refusal: str | None = None


_UNKNOWN = Lookup(None, "the key is not valid")


def environment_keys(api_keys: str, admin_keys: str) -> list[ApiKey]:
    """The keys of AIML_API_KEYS and AIML_ADMIN_KEYS (comma-separated secrets), named by
    their digest's first 12 hex digits (they have no other name)."""
    found: dict[str, ApiKey] = {}
    for value, role in ((api_keys, Role.USER), (admin_keys, Role.ADMIN)):
        for secret in (part.strip() for part in value.split(",")):
            if secret:
                digest = secret_digest(secret)
                known = found.get(digest)
                if known is None or role is Role.ADMIN:
                    found[digest] = ApiKey(
                        f"key-{digest[:12]}", digest, "", role, from_environment=True
                    )
    return list(found.values())


class KeyDirectory:
    def __init__(
        self,
        store: KeyStore | None,
        environment: Iterable[ApiKey] = (),
        *,
        refresh_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.refresh_s = refresh_s
        self._clock = clock
        self._environment = {key.digest: key for key in environment}
        self._by_digest: dict[str, ApiKey] = dict(self._environment)
        self._teams: dict[str, Team] = {}
        self._unknown: dict[str, float] = {}
        self._revision: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    @property
    def enabled(self) -> bool:
        """Whether keys are asked for: any key in the environment or the database (with
        none, every route is open, as before keys were data)."""
        return bool(self._by_digest)

    def lookup(self, digest: str) -> Lookup | None:
        """What a digest is, from memory; ``None``: not known here (ask :meth:`find`)."""
        key = self._by_digest.get(digest)
        if key is None:
            seen = self._unknown.get(digest)
            if seen is not None and self._clock() - seen < self.refresh_s:
                return _UNKNOWN
            return None
        return self._judge(key, digest)

    async def find(self, digest: str) -> Lookup:
        """What a digest is, asking the database when memory does not know it."""
        known = self.lookup(digest)
        if known is not None:
            return known
        key = await asyncio.to_thread(self.store.find, digest) if self.store is not None else None
        if key is None:
            if len(self._unknown) >= _MAX_UNKNOWN:
                self._unknown.clear()
            self._unknown[digest] = self._clock()
            return _UNKNOWN
        self._hold(key)
        return self._judge(key, digest)

    def team(self, name: str | None) -> Team | None:
        return self._teams.get(name) if name is not None else None

    def known(self) -> list[ApiKey]:
        """Every key known here: the environment's and the database's."""
        return sorted({k.name: k for k in self._by_digest.values()}.values(), key=lambda k: k.name)

    # -- keeping up ----------------------------------------------------------------------

    def start(self) -> None:
        if self.store is not None:
            self._task = asyncio.ensure_future(self._follow())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def changed(self) -> None:
        """The keys changed (here, or another front says so): read them again now."""
        self._revision = None
        self._wake.set()

    async def refresh(self) -> None:
        """Read the keys again if the revision moved (or :meth:`changed` was called)."""
        if self.store is None:
            return
        if self._revision is not None and (
            await asyncio.to_thread(self.store.revision) == self._revision
        ):
            return
        revision, keys, teams = await asyncio.to_thread(self.store.snapshot)
        by_digest = dict(self._environment)
        for key in keys:
            by_digest[key.digest] = key
            if key.previous_digest is not None:
                by_digest[key.previous_digest] = key
        self._by_digest, self._teams = by_digest, {t.name: t for t in teams}
        self._unknown.clear()
        self._revision = revision

    async def _follow(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.refresh()
            except Exception as exc:  # the database is away: keep what is known, say so
                log.warning("keys not refreshed: %s", exc)
            # Not asyncio.wait_for: on Python 3.11 it swallows a cancel that comes as the
            # wake does, and aclose would wait for ever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.refresh_s):
                    await self._wake.wait()

    def put(self, key: ApiKey) -> None:
        """A key as it is now (changed through this front): in force here at once, before
        the next read of every key (a revoked or rotated key stops with this answer)."""
        stale = [d for d, known in self._by_digest.items() if known.name == key.name]
        for digest in stale:
            del self._by_digest[digest]
        self._hold(key)

    def put_team(self, team: Team) -> None:
        self._teams[team.name] = team

    def _hold(self, key: ApiKey) -> None:
        self._by_digest[key.digest] = key
        if key.previous_digest is not None:
            self._by_digest[key.previous_digest] = key

    def _judge(self, key: ApiKey, digest: str) -> Lookup:
        now = self._clock()
        if key.revoked_at is not None:
            return Lookup(None, f"the key {key.name!r} is revoked")
        if key.expires_at is not None and now >= key.expires_at:
            return Lookup(None, f"the key {key.name!r} expired")
        if digest != key.digest and (key.previous_until is None or now >= key.previous_until):
            return Lookup(None, f"the key {key.name!r} was rotated")
        return Lookup(key)
