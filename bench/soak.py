"""A load run well past the limits, with the engine and the registry stopped and restarted
during it: every request must end in a success or a meaningful error within its deadline,
the process must stay up with flat memory, and /metrics must agree with the client's counts.

    .venv/bin/python -m bench.soak --seconds 60 --concurrency 64

aiml runs as ``aiml serve`` against a real ``mlflow server`` and the stand-in Ollama server
(each a process of its own), with small limits (8 running, 8 queued, a 2 s deadline) so that
overload is constant. Latency is measured twice: by this client (which includes its own
event-loop lag, also reported, and the network between) and by aiml's request-duration
histogram; requests the client saw answered late are listed with when they were sent.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from aiml import errors
from tests.fakes.processes import Process, aiml_serve, mlflow_server
from tests.fakes.servers import free_port

DEADLINE_S = 2.0
ALLOWED = {200, 404, 429, 503, 504}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="aiml-soak-"))
    registry = mlflow_server(work / "mlflow")
    registry.start()
    ollama = _standin(work / "ollama")
    ollama.start()
    url = registry.health_url.removesuffix("/health")
    env = {
        "MLFLOW_TRACKING_URI": url,
        "OLLAMA_HOST": ollama.health_url.removesuffix("/api/version"),
        "AIML_ENGINES": "ollama",
        "AIML_MAX_IN_FLIGHT": "8",
        "AIML_MAX_QUEUE": "8",
        "AIML_REQUEST_TIMEOUT_S": str(DEADLINE_S),
        "AIML_RESOLVE_TTL_S": "1",
        "AIML_OLLAMA_TIMEOUT_S": "5",
    }
    full = {**os.environ, **env, "AIML_HOME": str(work / "home")}
    for local, name in (("llama2:7b", "chat-a"), ("llama2:13b", "chat-b")):
        subprocess.run(
            [sys.executable, "-m", "aiml", "register-ollama", local, name, "--alias", "prod"],
            env=full,
            check=True,
            capture_output=True,
        )
    aiml = aiml_serve(work / "aiml", env)
    aiml.start()
    base = aiml.health_url.removesuffix("/health/live")
    try:
        outcome = asyncio.run(_run(base, args, aiml.proc.pid if aiml.proc else 0, ollama, registry))
        alive = aiml.proc is not None and aiml.proc.poll() is None
        metrics = httpx.get(f"{base}/metrics").text
        errors = httpx.get(f"{base}/inference/stats").json()["stats"]["errors"]
    finally:
        aiml.stop()
        ollama.stop()
        registry.stop()
    _report(outcome, metrics, alive, args)
    print("aiml's errors by code:", errors)


async def _run(
    base: str, args: argparse.Namespace, pid: int, ollama: Process, registry: Process
) -> dict[str, object]:
    statuses: collections.Counter[int] = collections.Counter()
    failures: collections.Counter[str] = collections.Counter()
    late: list[tuple[float, float, int, str]] = []
    latencies: list[float] = []
    rss: list[int] = []
    began = time.monotonic()
    stop_at = began + args.seconds
    bodies = _bodies()

    async def client() -> None:
        # One connection per client, as 64 separate users would have: a shared pool queues
        # requests inside httpx (seen: 3-4 s before a request was even sent), which is the
        # load generator's own latency, not the server's.
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(base_url=base, timeout=DEADLINE_S + 5, limits=limits) as http:
            await requests(http)

    async def requests(http: httpx.AsyncClient) -> None:
        while time.monotonic() < stop_at:
            path, body = random.choice(bodies)
            started = time.monotonic()
            try:
                response = await http.post(path, json=body)
                await response.aread()
                status = _outcome(response)
            except httpx.HTTPError as exc:
                status = -1  # no answer at all: never acceptable
                failures[f"{type(exc).__name__}: {exc}"[:120]] += 1
            took = time.monotonic() - started
            statuses[status] += 1
            latencies.append(took)
            if took > DEADLINE_S + 1.0:
                late.append((started - began, took, status, path))

    async def faults() -> None:
        plan = [
            (0.2, ollama.stop, "engine stopped"),
            (0.35, ollama.start, "engine back"),
            (0.5, registry.stop, "registry stopped"),
            (0.75, registry.start, "registry back"),
        ]
        began = time.monotonic()
        for at, action, label in plan:
            await asyncio.sleep(max(0.0, began + at * args.seconds - time.monotonic()))
            await asyncio.to_thread(action)
            print(f"{time.monotonic() - began:6.1f}s {label}", flush=True)

    lags: list[float] = []

    async def client_lag() -> None:
        """How late this process's own loop wakes up: part of any latency it measures."""
        while time.monotonic() < stop_at:
            asked = time.monotonic()
            await asyncio.sleep(0.05)
            lags.append(time.monotonic() - asked - 0.05)

    async def memory() -> None:
        while time.monotonic() < stop_at:
            rss.append(_rss(pid))
            await asyncio.sleep(1)

    await asyncio.gather(
        faults(), memory(), client_lag(), *(client() for _ in range(args.concurrency))
    )
    return {
        "statuses": statuses,
        "late": late,
        "latencies": latencies,
        "rss": rss,
        "failures": failures,
        "lags": lags,
    }


def _standin(folder: Path) -> Process:
    """The stand-in Ollama server in a process of its own, restartable on its port."""
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable, "-m", "uvicorn", "bench.peers.ollama_standin:app",
        "--host", "127.0.0.1", "--port", str(port), "--lifespan", "off",
        "--log-level", "warning", "--timeout-graceful-shutdown", "1",
    ]  # fmt: skip
    env = {
        **os.environ,
        "STANDIN_MODELS": "llama2:7b,llama2:13b",
        "STANDIN_DELAY_S": "0.02",
        "STANDIN_TOKEN_DELAY_S": "0.005",
    }
    return Process(
        argv, env=env, log=folder / "log", health_url=f"http://127.0.0.1:{port}/api/version"
    )


def _outcome(response: httpx.Response) -> int:
    """The status the request ended with: for a stream, the error its last line reports."""
    if response.status_code == 200 and "ndjson" in response.headers.get("content-type", ""):
        last = json.loads(response.text.strip().splitlines()[-1])
        if last.get("success") is False:
            return _STATUS[last["error"]["code"]]
    return response.status_code


_STATUS = {cls.code: cls.status_code for cls in errors.AimlError.__subclasses__()}


def _bodies() -> list[tuple[str, dict[str, object]]]:
    messages = [{"role": "user", "content": "tell me about load shedding"}]
    return [
        (
            "/inference/infer",
            {
                "task": "chat",
                "engine": "ollama",
                "model_name": "chat-a@prod",
                "data": {"messages": messages},
            },
        ),
        (
            "/inference/infer",
            {
                "task": "text-generation",
                "engine": "ollama",
                "model_name": "chat-b",
                "data": {"inputs": "hi"},
                "stream": True,
            },
        ),
        ("/v1/chat/completions", {"model": "chat-b@prod", "messages": messages}),
        ("/api/chat", {"model": "chat-a:prod", "messages": messages, "stream": False}),
        ("/api/generate", {"model": "llama2:7b", "prompt": "a b c"}),
    ]


def _rss(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def _report(
    outcome: dict[str, object], metrics: str, alive: bool, args: argparse.Namespace
) -> None:
    statuses: collections.Counter[int] = outcome["statuses"]  # type: ignore[assignment]
    latencies: list[float] = outcome["latencies"]  # type: ignore[assignment]
    rss: list[int] = outcome["rss"]  # type: ignore[assignment]
    late: list[tuple[float, float, int, str]] = outcome["late"]  # type: ignore[assignment]
    served: collections.Counter[int] = collections.Counter()
    within: dict[str, float] = collections.defaultdict(float)
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == "aiml_requests_total":
                served[int(sample.labels["status"])] += int(sample.value)
            if sample.name == "aiml_request_duration_seconds_bucket":
                within[sample.labels["le"]] += sample.value
    total = sum(statuses.values())
    print(f"\n{total} requests in {args.seconds} s at concurrency {args.concurrency}")
    print("client saw   :", dict(sorted(statuses.items())))
    print("aiml counted :", dict(sorted(served.items())))
    unexpected = {s: n for s, n in statuses.items() if s not in ALLOWED}
    print(f"outside {sorted(ALLOWED)}: {unexpected or 'none'} {dict(outcome['failures'])}")
    print(f"answered later than deadline + 1 s, as the client measured: {len(late)}")
    for at, took, status, path in late[:20]:
        print(f"    sent at {at:6.1f}s  took {took:5.2f}s  status {status}  {path}")
    lags: list[float] = outcome["lags"]  # type: ignore[assignment]
    print(
        f"the load client's own event-loop lag (part of what it measures): "
        f"p50 {statistics.median(lags) * 1000:.1f} ms, max {max(lags) * 1000:.1f} ms"
    )
    over = within["+Inf"] - within["2.5"]
    print(f"taking over 2.5 s inside aiml (its request duration histogram): {over:.0f}")
    q = statistics.quantiles(latencies, n=100)
    print(
        f"latency p50 {q[49] * 1000:.1f} ms, p99 {q[98] * 1000:.1f} ms, "
        f"max {max(latencies) * 1000:.1f} ms"
    )
    third = max(1, len(rss) // 3)
    print(
        f"aiml RSS MiB: first third {statistics.median(rss[:third]) / 2**20:.1f}, "
        f"last third {statistics.median(rss[-third:]) / 2**20:.1f}, max {max(rss) / 2**20:.1f}"
    )
    print(f"aiml process still up after the run: {alive}")
    agree = all(served.get(s, 0) == n for s, n in statuses.items())
    print(f"metrics agree with the client's counts: {agree}")


if __name__ == "__main__":
    main()
