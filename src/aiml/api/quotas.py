"""The Quotas middleware: a key's (and its team's) limits and budgets before a request,
its usage counted after.

Before: requests and tokens per minute (:mod:`aiml.teams.rate_limits`), concurrent requests
(:mod:`aiml.teams.slots`), both shared by every front, token and money budgets per UTC day and month
(:mod:`aiml.teams.usage`); past one, 429 with ``Retry-After`` naming the limit. Every
answer to a key with per-minute limits carries OpenAI's ``x-ratelimit-*`` headers. After:
the request's usage (the model, version and tokens the gate noted) is counted in memory
and its tokens charged to the per-minute limits; nothing here waits for the database
unless a lease of the minute's allowance ran out.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aiml.errors import BudgetExceeded, RateLimited
from aiml.teams.context import UsageNote, request_usage
from aiml.teams.keys import ApiKey, KeyLimits
from aiml.teams.rate_limits import REQUESTS, TOKENS, Standing
from aiml.teams.service import Teams
from aiml.teams.usage import UsageRow, day_of, next_day, next_month

from .auth import Access, access_of, caller_of
from .errors import render_error
from .middleware import close_if_body

__all__ = ["Quotas"]


class Quotas:
    def __init__(
        self,
        app: ASGIApp,
        *,
        teams: Callable[[], Teams | None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.app = app
        self.teams = teams
        self._clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        teams = self.teams()
        if (
            teams is None
            or scope["type"] != "http"
            or access_of(scope["method"], scope["path"]) is Access.OPEN
        ):
            await self.app(scope, receive, send)
            return
        key = caller_of(scope).key
        subjects = _subjects(key, teams)
        note = UsageNote()
        status = 499  # until an answer starts: no answer is a client that went away
        held: list[tuple[str, int]] = []
        try:
            limit_headers = await self._admit(teams, subjects, held)
        except RateLimited as refusal:
            status = refusal.status_code
            headers = refusal.headers | close_if_body(scope)  # the body is never read
            await render_error(
                scope["path"], status, refusal.code, refusal.message, headers=headers
            )(scope, receive, send)
            self._count(teams, key, note, status)
            return

        async def send_with_limits(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if limit_headers:
                    message["headers"] = [*message.get("headers", ()), *limit_headers]
            await send(message)

        token = request_usage.set(note)
        try:
            await self.app(scope, receive, send_with_limits)
        except Exception:
            if status == 499:  # a crash before any answer: the 500 the server sends
                status = 500
            raise
        finally:
            request_usage.reset(token)
            for subject, limit in held:
                teams.slots.release(subject, limit)
            self._count(teams, key, note, status)
            if note.tokens:
                for subject, limits in subjects:
                    if limits.tpm is not None:
                        teams.limiter.charge(subject, note.tokens)

    async def _admit(
        self, teams: Teams, subjects: list[tuple[str, KeyLimits]], held: list[tuple[str, int]]
    ) -> list[tuple[bytes, bytes]]:
        """Refuse (RateLimited, BudgetExceeded) or admit; the ``x-ratelimit-*`` headers of
        the tightest subject. Concurrency slots taken are appended to ``held``."""
        standings: dict[str, Standing] = {}
        for subject, limits in subjects:
            if limits.budgeted:
                await self._check_budgets(teams, subject, limits)
            for kind, limit in ((REQUESTS, limits.rpm), (TOKENS, limits.tpm)):
                if limit is None:
                    continue
                standing = await teams.limiter.take(subject, kind, limit)
                if standing is None:
                    reset = teams.limiter.reset_in()
                    raise RateLimited(
                        f"{subject} used its {limit} {kind} per minute",
                        retry_after=int(reset) + 1,
                        headers=_headers(kind, Standing(limit, 0, reset)),
                    )
                if kind not in standings or standing.remaining < standings[kind].remaining:
                    standings[kind] = standing
        try:  # last: a refusal above holds no slot
            for subject, limits in subjects:
                if limits.concurrent is None:
                    continue
                if not await teams.slots.acquire(subject, limits.concurrent):
                    raise RateLimited(
                        f"{subject} has {limits.concurrent} request(s) running, its limit",
                        retry_after=1,
                    )
                held.append((subject, limits.concurrent))
        except BaseException:
            for taken, limit in held:
                teams.slots.release(taken, limit)
            held.clear()
            raise
        return [
            (name.encode(), value.encode())
            for kind, standing in standings.items()
            for name, value in _headers(kind, standing).items()
        ]

    async def _check_budgets(self, teams: Teams, subject: str, limits: KeyLimits) -> None:
        column, _, name = subject.partition(":")
        now = self._clock()
        today = day_of(now)
        month = today[:8] + "01"
        for since, tokens, cost, ends, period in (
            (today, limits.daily_tokens, limits.daily_cost, next_day(now), "day"),
            (month, limits.monthly_tokens, limits.monthly_cost, next_month(now), "month"),
        ):
            if tokens is None and cost is None:
                continue
            spent = await teams.usage.spent(column, name, since)
            over = (tokens is not None and spent.tokens >= tokens) or (
                cost is not None and spent.cost >= cost
            )
            if over:
                what = f"{tokens} tokens" if tokens is not None else f"{cost} of cost"
                raise BudgetExceeded(
                    f"{subject} spent its budget for the {period} ({what})",
                    retry_after=int(ends - now) + 1,
                )

    def _count(self, teams: Teams, key: ApiKey | None, note: UsageNote, status: int) -> None:
        teams.usage.record(
            UsageRow(
                day=day_of(self._clock()),
                key=key.name if key is not None else "-",
                team=(key.team or "") if key is not None else "",
                model=note.model,
                version=note.version,
                requests=1,
                errors=1 if status >= 400 and status != 499 else 0,
                input_tokens=note.input_tokens,
                output_tokens=note.output_tokens,
                cost=note.cost,
            )
        )


def _subjects(key: ApiKey | None, teams: Teams) -> list[tuple[str, KeyLimits]]:
    """The key's and its team's limits, where they have any."""
    if key is None:
        return []
    found = []
    if key.limits:
        found.append((f"key:{key.name}", key.limits))
    team = teams.directory.team(key.team)
    if team is not None and team.limits:
        found.append((f"team:{team.name}", team.limits))
    return found


def _headers(kind: str, standing: Standing) -> dict[str, str]:
    """OpenAI's rate-limit headers for ``kind`` (requests or tokens)."""
    return {
        f"x-ratelimit-limit-{kind}": str(standing.limit),
        f"x-ratelimit-remaining-{kind}": str(standing.remaining),
        f"x-ratelimit-reset-{kind}": _duration(standing.reset_s),
    }


def _duration(seconds: float) -> str:
    """As OpenAI writes it: ``20ms``, ``17s``, ``1m0s``."""
    if seconds < 1:
        return f"{int(seconds * 1000)}ms"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"
