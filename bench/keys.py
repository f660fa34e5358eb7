"""What a key costs a request: the key check, its limits and its usage, side by side.

Every configuration serves the same ``/v1/chat/completions`` request from the same Ollama-API
stub (``bench/peers/stub.py``), measured as ``bench.gateway`` does (``wrk -t1``, one uvicorn
worker per server, rounds interleaved, medians; server CPU per request from /proc):

* ``(a) no keys``: an aiml without keys (every route open); ``(a2)``: a second such server,
  the difference two identical processes show (what HTTP can resolve here);
* ``(b) env key``: an ``AIML_API_KEYS`` key (no limits);
* ``(c) db key``: a key made through ``POST /admin/keys``, no limits;
* ``(d) db key+limits``: a key with rpm, tpm, concurrent and a daily token budget (all too
  large to refuse), models ``llama2-*@production``, in a team with rpm, tpm and a daily
  budget: the full path (lookup, leases, budget check, usage counted and flushed).

(b), (c) and (d) are one server's keys. LiteLLM's proxy on the same stub joins the rounds
when installed (``--litellm``): with its master key, and with ``--litellm-db`` a virtual key
with a budget and rpm/tpm limits (its database is a throw-away PostgreSQL; LiteLLM needs
Prisma's engines for it, which it downloads at start).

    .venv/bin/python -m bench.keys --rounds 3 --seconds 5

``bench.key_counters`` measures the same in one process (no HTTP) and what a shared counter
costs per call (a lease on sqlite and PostgreSQL, a Ray actor).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

from bench.gateway import MESSAGES, Target, _litellm, _measure, _uvicorn
from tests.fakes.postgres import PostgresCluster, postgres_bin
from tests.fakes.processes import Process, aiml_serve

ENV_KEY = "bench-env-key"
ADMIN_KEY = "bench-admin-key"
#: Never reached in a run: the limits are checked and counted, never refuse.
LARGE = 10_000_000
BUDGET = 10**12
KEY_LIMITS = {"rpm": LARGE, "tpm": LARGE, "concurrent": 1000, "daily_tokens": BUDGET}
TEAM_LIMITS = {"rpm": LARGE, "tpm": LARGE, "daily_tokens": BUDGET}
BODY: dict[str, object] = {
    "model": "llama2-7b-chat@production",
    "messages": MESSAGES,
    "stream": False,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--front-db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument(
        "--litellm", default=str(Path.home() / ".cache/aiml/litellm-venv/bin/litellm")
    )
    parser.add_argument(
        "--litellm-db", action="store_true", help="also LiteLLM with a virtual key and budget"
    )
    parser.add_argument("--only", default="", help="comma-separated configuration names")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("this benchmark drives load with wrk: apt-get install wrk")
    work = Path(tempfile.mkdtemp(prefix="aiml-bench-keys-"))
    processes: list[Process] = []
    cluster: PostgresCluster | None = None
    try:
        stub = _uvicorn("bench.peers.stub:app", work / "stub")
        processes.append(stub)
        stub.start()
        backend = stub.health_url.removesuffix("/api/version")
        if args.front_db == "postgresql" or args.litellm_db:
            if postgres_bin() is None:
                raise SystemExit("PostgreSQL is not installed (/usr/lib/postgresql/*/bin)")
            # Not under AIML_HOME: as root the server runs as nobody, who needs the folder.
            cluster = PostgresCluster(Path(tempfile.mkdtemp(prefix="aiml-bench-pg-"))).start()
        targets, keyed = _aiml(work, backend, args, cluster, processes)
        targets += _litellm_targets(work, backend, args, cluster, processes)
        if args.only:
            targets = [t for t in targets if t.name in args.only.split(",")]
        results = _measure(targets, args)
        counted = _usage(keyed, "limited")
    finally:
        for process in reversed(processes):
            process.stop()
        if cluster is not None:
            cluster.stop()
            shutil.rmtree(cluster.folder, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    _report(results, args)
    if "(d) db key+limits" in {name for name, _ in results}:
        sent = sum(int(run["requests"]) for (n, _), runs in results.items() for run in runs
                   if n == "(d) db key+limits")  # fmt: skip
        print(
            f"\n(d)'s usage as aiml counted it (GET /admin/usage, after the rounds): "
            f"{counted['requests']} requests, {counted['input_tokens']} + "
            f"{counted['output_tokens']} tokens, {counted['errors']} errors; wrk counted "
            f"{sent} answers (+1 header check; wrk leaves up to c requests unread per run)"
        )


def _aiml(
    work: Path,
    backend: str,
    args: argparse.Namespace,
    cluster: PostgresCluster | None,
    processes: list[Process],
) -> tuple[list[Target], Process]:
    """The aiml servers, started, their keys made; the configurations' targets."""
    env = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'registry.db'}",
        "OLLAMA_HOST": backend,
        "AIML_ENGINES": "ollama",
    }
    register = [sys.executable, "-m", "aiml", "register-ollama", "llama2:7b", "llama2-7b-chat"]
    subprocess.run(
        [*register, "--alias", "production"],
        env={**os.environ, **env},
        check=True,
        capture_output=True,
    )
    keyed_env = {**env, "AIML_API_KEYS": ENV_KEY, "AIML_ADMIN_KEYS": ADMIN_KEY}
    if cluster is not None and args.front_db == "postgresql":
        keyed_env["AIML_DATABASE_URL"] = cluster.create_database("aiml_front")
    bare, twin, keyed = (
        aiml_serve(work / "a", env),
        aiml_serve(work / "a2", env),
        aiml_serve(work / "b", keyed_env),
    )
    for server in (bare, twin, keyed):
        processes.append(server)
        server.start(timeout_s=120)
    plain, limited = _make_keys(keyed)
    path = "/v1/chat/completions"

    def bearer(secret: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {secret}"}

    # One look at (d)'s answer: its limits are in force (the x-ratelimit-* headers).
    answer = httpx.post(_origin(keyed) + path, json=BODY, headers=bearer(limited), timeout=30)
    answer.raise_for_status()
    shown = {k: v for k, v in answer.headers.items() if k.startswith("x-ratelimit")}
    print(f"(d) answers {answer.status_code} with {shown}", flush=True)
    return [
        Target(
            "direct",
            processes[0],
            "/api/chat",
            {"model": "llama2:7b", "messages": MESSAGES, "stream": False},
        ),
        Target("(a) no keys", bare, path, BODY),
        Target("(a2) no keys (twin)", twin, path, BODY),
        Target("(b) env key", keyed, path, BODY, bearer(ENV_KEY)),
        Target("(c) db key", keyed, path, BODY, bearer(plain)),
        Target("(d) db key+limits", keyed, path, BODY, bearer(limited)),
    ], keyed


def _origin(process: Process) -> str:
    return process.health_url.removesuffix("/health/live")


def _admin(process: Process, method: str, path: str, body: object = None) -> Any:
    answer = httpx.request(
        method,
        _origin(process) + path,
        json=body,
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=30,
    )
    answer.raise_for_status()
    return answer.json()


def _make_keys(process: Process) -> tuple[str, str]:
    """Through the admin API: (c)'s key and (d)'s (in a team with limits); their secrets."""
    _admin(process, "PUT", "/admin/teams/bench", {"limits": TEAM_LIMITS})
    plain = _admin(process, "POST", "/admin/keys", {"name": "plain", "role": "user"})
    limited = _admin(
        process,
        "POST",
        "/admin/keys",
        {
            "name": "limited",
            "role": "user",
            "team": "bench",
            "models": ["llama2-*@production"],
            "limits": KEY_LIMITS,
        },
    )
    return str(plain["key"]), str(limited["key"])


def _usage(process: Process, key: str) -> dict[str, int]:
    rows = _admin(process, "GET", f"/admin/usage?key={key}")["usage"]
    columns = ("requests", "errors", "input_tokens", "output_tokens")
    return {c: sum(int(row[c]) for row in rows) for c in columns}


def _litellm_targets(
    work: Path,
    backend: str,
    args: argparse.Namespace,
    cluster: PostgresCluster | None,
    processes: list[Process],
) -> list[Target]:
    """LiteLLM's proxy with its master key and (``--litellm-db``) a virtual key."""
    if not Path(args.litellm).exists():
        print(f"LiteLLM not measured: {args.litellm} is not there", flush=True)
        return []
    chat: dict[str, object] = {"model": "llama2-7b-chat", "messages": MESSAGES}
    master = _litellm(args.litellm, work, backend)
    processes.append(master)
    master.start(timeout_s=180)
    origin = master.health_url.removesuffix("/health/liveliness")
    targets = [Target("LiteLLM master key", master, "/chat/completions", chat, _MASTER)]
    if cluster is None or not args.litellm_db:
        return targets
    # Prisma wants postgresql://, without SQLAlchemy's driver name.
    url = cluster.create_database("litellm").replace("postgresql+psycopg://", "postgresql://")
    virtual = _litellm(args.litellm, work, backend, {"DATABASE_URL": url}, name="litellm-db")
    processes.append(virtual)
    try:
        virtual.start(timeout_s=600)
    except (RuntimeError, TimeoutError) as exc:
        lines = [line for line in str(exc).splitlines() if "cost map" not in line]
        print("LiteLLM with its database did not start:\n  " + "\n  ".join(lines[-8:]))
        return targets
    origin = virtual.health_url.removesuffix("/health/liveliness")
    made = httpx.post(
        origin + "/key/generate",
        json={
            "models": ["llama2-7b-chat"],
            "max_budget": BUDGET,
            "rpm_limit": LARGE,
            "tpm_limit": LARGE,
        },
        headers=_MASTER,
        timeout=60,
    )
    made.raise_for_status()
    secret = made.json()["key"]
    auth = {"Authorization": f"Bearer {secret}"}
    targets.append(Target("LiteLLM virtual key", virtual, "/chat/completions", chat, auth))
    return targets


_MASTER = {"Authorization": "Bearer sk-bench"}


def _report(
    results: dict[tuple[str, int], list[dict[str, float]]], args: argparse.Namespace
) -> None:
    levels = [int(c) for c in args.concurrency.split(",")]
    low, high = levels[0], levels[-1]
    names = list(dict.fromkeys(name for name, _ in results))

    def med(name: str, c: int, key: str) -> float:
        return statistics.median(run[key] for run in results[(name, c)])

    def added(name: str, base: str, key: str = "p50_ms") -> str:
        if (base, low) not in results:
            return "-"
        return f"{med(name, low, key) - med(base, low, key):+.3f}"

    print(
        f"\nmedians of {args.rounds} rounds, {args.seconds} s each, wrk -t1; added: the "
        f"configuration's p50 (CPU per request) minus (a)'s and (b)'s at c={low}, in ms"
    )
    print(
        f"{'configuration':<22} {'p50 vs (a)':>10} {'vs (b)':>7} {'cpu vs (a)':>10} | "
        f"{'p50':>7} {'p90':>7} {'p99':>7} {'cpu/req':>7} (c={low}) | "
        f"{'req/s':>6} {'p50':>7} {'p99':>7} {'cpu/req':>7} (c={high}) | errors"
    )
    for name in names:
        errors = sum(run["errors"] for (n, _), runs in results.items() for run in runs if n == name)
        row = (
            f"{name:<22} {added(name, '(a) no keys'):>10} {added(name, '(b) env key'):>7} "
            f"{added(name, '(a) no keys', 'cpu_ms'):>10} | "
            f"{med(name, low, 'p50_ms'):>7.3f} {med(name, low, 'p90_ms'):>7.3f} "
            f"{med(name, low, 'p99_ms'):>7.3f} {med(name, low, 'cpu_ms'):>7.3f}"
        )
        if high != low:
            row += (
                f"        | {med(name, high, 'rps'):>6.0f} {med(name, high, 'p50_ms'):>7.2f} "
                f"{med(name, high, 'p99_ms'):>7.2f} {med(name, high, 'cpu_ms'):>7.3f}"
            )
        print(f"{row}         | {errors:.0f}")


if __name__ == "__main__":
    main()
