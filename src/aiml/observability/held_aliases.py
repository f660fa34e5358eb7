"""Aliases held at their last good version: what ``/inference/stats``, ``/metrics`` and the
console show while a move made in the registry is refused (``inference/alias_holds.py``)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["HeldAliases", "Hold"]


@dataclass(frozen=True, slots=True)
class Hold:
    """``alias`` (``name@alias``) is served at version ``serving`` while the registry names
    ``refused``; ``missing`` says what that version lacks (``kind``, ``name``, ``reason``).
    ``checked`` is false when the check itself could not run (registry or engine down)."""

    alias: str
    serving: int
    refused: int
    missing: tuple[Mapping[str, str], ...]
    checked: bool = True
    since: float = field(default_factory=time.time)  # wall clock, for people

    def as_dict(self) -> dict[str, Any]:
        return {
            "serving": self.serving,
            "refused": self.refused,
            "checked": self.checked,
            "missing": [dict(item) for item in self.missing],
            "since": round(self.since, 3),
        }


class HeldAliases:
    """The holds now, one per alias, at most ``limit`` (the oldest goes first); updated on
    the event loop, read by the stats route and the metrics collector."""

    def __init__(self, limit: int = 1024) -> None:
        self._limit = limit
        self._holds: dict[str, Hold] = {}
        #: Versions refused since start (each refused version of an alias counted once).
        self.refusals = 0

    def __len__(self) -> int:
        return len(self._holds)

    def __iter__(self) -> Iterator[Hold]:
        return iter(list(self._holds.values()))

    def get(self, alias: str) -> Hold | None:
        return self._holds.get(alias)

    def hold(self, hold: Hold) -> None:
        before = self._holds.pop(hold.alias, None)
        said = before is not None and before.checked and before.refused == hold.refused
        if hold.checked and not said:
            self.refusals += 1
        self._holds[hold.alias] = hold
        while len(self._holds) > self._limit:
            del self._holds[next(iter(self._holds))]

    def release(self, alias: str) -> Hold | None:
        return self._holds.pop(alias, None)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """``name@alias`` -> its hold, as ``/inference/stats`` shows it."""
        return {hold.alias: hold.as_dict() for hold in self._holds.values()}
