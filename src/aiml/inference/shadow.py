"""Shadow traffic: a copy of a share of an alias's requests sent to a candidate version, off
the request path, its answer compared with the one the caller got. A stream is copied once
it has ended well, as a whole answer, and compared on its whole text.

Declared like a canary, as a version tag on the alias's version,
``aiml.shadow.<alias> = "<candidate version>:<percent>"``. The caller's answer is final
before its copy is even queued: a copy runs in a task of its own after the primary has
answered, never delays, fails or changes it, and is never counted in the caller's stats,
limits or admission slots. At most ``capacity`` copies run at once; past that a copy is
dropped and counted (no queue grows under load). Each comparison keeps both answers'
text, both latencies and whether they match exactly; the last ``keep`` pairs and running
totals per (alias, candidate) are what ``/inference/stats`` shows. Embeddings are compared
by the mean cosine of their vectors, not their text.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiml.errors import AimlError

from .canary import parse_canary

__all__ = ["SHADOW_TAG_PREFIX", "Answer", "ShadowTraffic", "cosine", "shadow_of"]

log = logging.getLogger("aiml.shadow")
SHADOW_TAG_PREFIX = "aiml.shadow."


def shadow_of(tags: dict[str, str] | Any, alias: str, served: int) -> tuple[int, float] | None:
    """The (candidate version, percent) an alias's version declares for shadowing, if any."""
    value = tags.get(f"{SHADOW_TAG_PREFIX}{alias}")
    if not value:
        return None
    try:
        declared = parse_canary(value)
    except AimlError:
        return None
    if declared.version == served or declared.weight <= 0:
        return None
    return declared.version, declared.weight


@dataclass(frozen=True, slots=True)
class Answer:
    """What a copy is compared on: the text, and an embedding's vectors (and, not compared,
    the tokens it took)."""

    text: str
    vectors: list[list[float]] | None = None
    tokens: int | None = field(default=None, compare=False)


#: The candidate's answer to the copied request.
Copy = Callable[[], Awaitable[Answer]]
#: Told each copy's end: its answer (``None``: it failed), its seconds and HTTP status.
Record = Callable[[Answer | None, float, int], None]


@dataclass(slots=True)
class _Totals:
    compared: int = 0
    matched: int = 0
    failed: int = 0
    dropped: int = 0
    pairs: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=20))


class ShadowTraffic:
    """Runs the copies, bounded; keeps what they found."""

    def __init__(self, *, capacity: int = 8, keep: int = 20) -> None:
        self._capacity = capacity
        self._keep = keep
        self._running: set[asyncio.Task[None]] = set()
        self._totals: dict[str, _Totals] = {}

    def sampled(self, percent: float) -> bool:
        return random.random() * 100 < percent  # a sample, not a secret

    def offer(
        self, key: str, primary: Answer, primary_s: float, copy: Copy, record: Record | None = None
    ) -> bool:
        """Run ``copy`` (the candidate's answer) in the background and compare it with the
        primary's, and tell ``record`` how it went (the copy's trace); ``False`` when it was
        dropped (``capacity`` copies running)."""
        totals = self._totals.setdefault(key, _Totals(pairs=deque(maxlen=self._keep)))
        if len(self._running) >= self._capacity:
            totals.dropped += 1
            return False
        task = asyncio.get_running_loop().create_task(
            self._compare(totals, primary, primary_s, copy, record)
        )
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return True

    def report(self) -> dict[str, dict[str, Any]]:
        return {
            key: {
                "compared": t.compared,
                "matched": t.matched,
                "exact_match_ratio": round(t.matched / t.compared, 4) if t.compared else None,
                "failed": t.failed,
                "dropped": t.dropped,
                "pairs": list(t.pairs),
            }
            for key, t in sorted(self._totals.items())
        }

    async def settled(self) -> None:
        """Until the copies running now have ended."""
        await asyncio.gather(*self._running, return_exceptions=True)

    async def aclose(self) -> None:
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)

    async def _compare(
        self, totals: _Totals, primary: Answer, primary_s: float, copy: Copy, record: Record | None
    ) -> None:
        started = time.perf_counter()
        try:
            answer = await copy()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the copy's failure is the candidate's, never the caller's
            totals.failed += 1
            log.info("shadow copy failed: %s", exc)
            status = exc.status_code if isinstance(exc, AimlError) else 500
            _told(record, None, time.perf_counter() - started, status)
            return
        seconds = time.perf_counter() - started
        _told(record, answer, seconds, 200)
        totals.compared += 1
        matched = answer == primary
        totals.matched += matched
        pair: dict[str, Any] = {
            "primary": primary.text[:2000],
            "candidate": answer.text[:2000],
            "exact_match": matched,
            "primary_s": round(primary_s, 6),
            "candidate_s": round(seconds, 6),
        }
        if primary.vectors and answer.vectors:
            pair["cosine"] = round(_mean_cosine(primary.vectors, answer.vectors), 6)
        totals.pairs.append(pair)


def _told(record: Record | None, answer: Answer | None, seconds: float, status: int) -> None:
    if record is None:
        return
    try:
        record(answer, seconds, status)
    except Exception:  # a copy's trace is never worth a failure
        log.exception("a shadow copy's trace was not recorded")


def cosine(x: list[float], y: list[float]) -> float:
    """The cosine of two vectors (0 for a zero vector)."""
    norm = math.sqrt(sum(v * v for v in x)) * math.sqrt(sum(v * v for v in y))
    return sum(p * q for p, q in zip(x, y, strict=False)) / norm if norm else 0.0


def _mean_cosine(a: list[list[float]], b: list[list[float]]) -> float:
    scores = [cosine(x, y) for x, y in zip(a, b, strict=False)]
    return sum(scores) / len(scores) if scores else 0.0
