"""What keys, limits and usage cost inside one process, and what a shared counter costs.

``--phases micro``: aiml's Authentication and Quotas middlewares around an app that answers
at once (noting the model and 8 + 9 tokens, and checking the key's models, as the gate
does), called in-process, each call timed alone, configurations interleaved in blocks:
the app alone, (a) no keys, (b) an environment key, (c) a database key, (d) a key with
rpm, tpm, concurrent and a daily token budget in a team with limits, and (d busy) the same
with ``--pending`` other keys' usage rows waiting for the next flush. Every Teams runs its
background work (key refresh, usage flush every second) on the same loop meanwhile.

``--phases counters``: one call to a shared counter, per call: a lease of the minute's
allowance (``WindowStore.lease``: one transaction) on sqlite and on PostgreSQL, directly and
through ``asyncio.to_thread`` as the fronts call it, and the same counter operation in a Ray
actor (``ray.get`` and ``await``); then how many such calls one process gets through with
``--in-flight`` of them at once. What a per-request shared counter would cost a request (and
cap a front at), against what a lease costs when it runs out (once per ``limit // 50``
requests).

    .venv/bin/python -m bench.key_counters --phases micro,counters
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiml.api.authentication import Authentication
from aiml.api.quotas import Quotas
from aiml.teams.context import request_key, request_usage
from aiml.teams.database import open_database
from aiml.teams.directory import environment_keys
from aiml.teams.keys import KeyLimits, ModelRules
from aiml.teams.rate_limits import REQUESTS, WindowStore
from aiml.teams.service import Teams, open_teams
from aiml.teams.usage import UsageRow, day_of
from aiml.types import ModelRef
from bench.keys import ENV_KEY, KEY_LIMITS, TEAM_LIMITS
from tests.fakes.postgres import PostgresCluster, postgres_bin

Call = Callable[[], Awaitable[object]]
REF = ModelRef("llama2-7b-chat", alias="production")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phases", default="micro,counters")
    parser.add_argument("--blocks", type=int, default=20, help="interleaved blocks")
    parser.add_argument("--calls", type=int, default=1000, help="calls per block (micro)")
    parser.add_argument("--counter-calls", type=int, default=100, help="per block (counters)")
    parser.add_argument("--in-flight", type=int, default=16, help="callers at once (counters)")
    parser.add_argument("--pending", type=int, default=1000, help="rows pending in (d busy)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="aiml-bench-counters-"))
    try:
        if "micro" in args.phases:
            asyncio.run(_micro(folder, args))
        if "counters" in args.phases:
            asyncio.run(_counters(folder, args))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def _micro(folder: Path, args: argparse.Namespace) -> None:
    bare = open_teams(f"sqlite:///{folder / 'bare.db'}")
    keyed = open_teams(
        f"sqlite:///{folder / 'keyed.db'}", environment=environment_keys(ENV_KEY, "")
    )
    # (d busy): another front whose ledger holds --pending rows of other keys (a long flush
    # interval keeps them pending): every budgeted request adds up what is pending.
    busy = open_teams(f"sqlite:///{folder / 'busy.db'}", flush_s=3600)
    made = [_make_keys(teams) for teams in (keyed, busy)]
    for teams in (bare, keyed, busy):
        await teams.open()
    today = day_of(time.time())
    for i in range(args.pending):
        busy.usage.record(UsageRow(today, f"other-{i}", "bench", "llama2-7b-chat", "1", 1))

    def chain(teams: Teams) -> Any:
        return Authentication(
            Quotas(_served, teams=lambda: teams), directory=lambda: teams.directory
        )

    calls: dict[str, Call] = {
        "app alone": _caller(_served, None),
        "(a) no keys": _caller(chain(bare), None),
        "(b) env key": _caller(chain(keyed), ENV_KEY),
        "(c) db key": _caller(chain(keyed), made[0]["plain"]),
        "(d) db key+limits": _caller(chain(keyed), made[0]["limited"]),
        f"(d busy) {args.pending} pending": _caller(chain(busy), made[1]["limited"]),
    }
    for call in calls.values():  # the first lease of each minute, connections, caches
        for _ in range(200):
            await call()
    times = await _interleaved(calls, args.blocks, args.calls)
    for teams in (bare, keyed, busy):
        await teams.aclose()
    _report(
        f"in-process, {args.blocks} blocks x {args.calls} calls per configuration, "
        "interleaved; each call timed alone (us)",
        times,
        ("(a) no keys", "(b) env key"),
        scale=1e6,
        unit="us",
    )


def _make_keys(teams: Teams) -> dict[str, str]:
    """(c)'s key and (d)'s, in a team with limits, as bench.keys makes them; their secrets."""
    _, plain = teams.keys.create_key("plain")
    teams.keys.put_team("bench", limits=KeyLimits.of(TEAM_LIMITS))
    _, limited = teams.keys.create_key(
        "limited",
        team="bench",
        rules=ModelRules(("llama2-*@production",)),
        limits=KeyLimits.of(KEY_LIMITS),
    )
    return {"plain": plain, "limited": limited}


async def _served(scope: Any, receive: Any, send: Any) -> None:
    """What the gate and the engine's accounting do for a key: check its models, note usage."""
    key = request_key.get()
    if key is not None and key.rules.model_refusal(REF, "text-generation") is not None:
        raise RuntimeError("refused")
    note = request_usage.get()
    if note is not None:
        note.model, note.version = REF.name, "1"
        note.input_tokens, note.output_tokens = 8, 9
    # New messages each time, as a server's app makes them (Quotas adds to the headers).
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def _caller(app: Any, secret: str | None) -> Call:
    headers = [(b"content-type", b"application/json")]
    if secret is not None:
        headers.append((b"authorization", f"Bearer {secret}".encode()))
    base = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        pass

    async def call() -> None:
        await app(dict(base), receive, send)  # a fresh scope, as the server makes

    return call


async def _interleaved(
    calls: dict[str, Call], blocks: int, per_block: int
) -> dict[str, list[float]]:
    """Seconds per call; the order of the configurations turns from block to block."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    clock = time.perf_counter
    for block in range(blocks):
        shift = block % len(names)
        for name in names[shift:] + names[:shift]:
            call, kept = calls[name], times[name]
            for _ in range(per_block):
                started = clock()
                await call()
                kept.append(clock() - started)
    return times


async def _counters(folder: Path, args: argparse.Namespace) -> None:
    calls: dict[str, Call] = {}
    window = 29_000_001  # not a multiple of 10: no clean-up of old minutes in the lease
    limit = 10**15
    stores = [("sqlite", WindowStore(open_database(f"sqlite:///{folder / 'counters.db'}")))]
    cluster: PostgresCluster | None = None
    ray: Any = None
    try:
        if postgres_bin() is not None:
            cluster = PostgresCluster(Path(tempfile.mkdtemp(prefix="aiml-bench-pg-"))).start()
            url = cluster.create_database("counters")
            stores.append(("PostgreSQL", WindowStore(open_database(url))))
        else:
            print("PostgreSQL is not installed: its lease is not measured")
        for name, store in stores:
            lease = (store.lease, "key:bench", REQUESTS, window, 1, limit)
            calls[f"lease, {name}"] = _sync(*lease)
            calls[f"lease, {name}, to_thread"] = _threaded(*lease)
        ray = _start_ray(folder / "ray")
        counter = ray.remote(_Counter).remote()
        ray.get(counter.lease.remote("key:bench", REQUESTS, window, 1, limit))

        async def ray_get() -> object:
            return ray.get(counter.lease.remote("key:bench", REQUESTS, window, 1, limit))

        async def ray_await() -> object:
            return await counter.lease.remote("key:bench", REQUESTS, window, 1, limit)

        calls["Ray actor, ray.get"] = ray_get
        calls["Ray actor, await"] = ray_await
        for call in calls.values():
            for _ in range(20):
                await call()
        times = await _interleaved(calls, args.blocks, args.counter_calls)
        rates = {
            name: await _rate(call, args.in_flight, args.counter_calls * 5)
            for name, call in calls.items()
            if name.endswith(("to_thread", "await"))
        }
    finally:
        if ray is not None:
            ray.shutdown()
        for _, store in stores:
            store.engine.dispose()
        if cluster is not None:
            cluster.stop()
            shutil.rmtree(cluster.folder, ignore_errors=True)
    _report(
        f"one shared-counter call, {args.blocks} blocks x {args.counter_calls} calls, "
        "interleaved (ms)",
        times,
        (),
        scale=1e3,
        unit="ms",
    )
    print(f"\nthe same calls, {args.in_flight} in flight at once (one subject, one process)")
    for name, rate in rates.items():
        print(f"{name:<28} {rate:>9.0f} calls/s")


async def _rate(call: Call, in_flight: int, total: int) -> float:
    """Calls per second with ``in_flight`` callers at once, ``total`` calls in all."""
    left = total

    async def caller() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await call()

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(in_flight)))
    return total / (time.perf_counter() - started)


class _Counter:
    """WindowStore.lease's arithmetic in an actor's memory."""

    def __init__(self) -> None:
        self.used: dict[tuple[str, str, int], int] = {}

    def lease(self, subject: str, kind: str, window: int, want: int, limit: int) -> tuple[int, int]:
        used = self.used.get((subject, kind, window), 0)
        granted = max(0, min(want, limit - used))
        self.used[(subject, kind, window)] = used + granted
        return granted, used + granted


def _sync(function: Callable[..., object], *args: object) -> Call:
    async def call() -> object:
        return function(*args)

    return call


def _threaded(function: Callable[..., object], *args: object) -> Call:
    async def call() -> object:
        return await asyncio.to_thread(function, *args)

    return call


def _start_ray(folder: Path) -> Any:
    """A Ray of our own (not a cluster another run left), in ``folder``."""
    os.environ.update({"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"})
    import ray

    ray.init(
        address="local",
        _temp_dir=str(folder),
        num_cpus=1,
        include_dashboard=False,
        object_store_memory=150_000_000,
        log_to_driver=False,
        configure_logging=False,
    )
    return ray


def _report(
    title: str,
    times: dict[str, list[float]],
    bases: tuple[str, ...],
    *,
    scale: float,
    unit: str,
) -> None:
    def p50(name: str) -> float:
        return statistics.median(times[name]) * scale

    print(f"\n{title}")
    head = f"{'configuration':<28} {'n':>7} {'p50':>9} {'p90':>9} {'p99':>9} {'mean':>9}"
    print(head + "".join(f"  {f'p50 vs {b.split()[0]}':>12}" for b in bases))
    for name, values in times.items():
        q = statistics.quantiles(values, n=100)
        row = (
            f"{name:<28} {len(values):>7} {p50(name):>9.2f} {q[89] * scale:>9.2f} "
            f"{q[98] * scale:>9.2f} {statistics.fmean(values) * scale:>9.2f}"
        )
        print(row + "".join(f"  {p50(name) - p50(b):>+9.2f} {unit}" for b in bases))


if __name__ == "__main__":
    main()
