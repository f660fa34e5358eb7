"""Time from ``set_registered_model_alias`` to the first request served by the new version,
with MLflow's webhooks, on one front and on two.

Starts a real ``mlflow server`` on sqlite with webhooks enabled (loopback allowed, its
webhook list cached 1 s), a stand-in Ollama server, and ``aiml serve`` fronts at a resolve
TTL of 300 s (so only the webhook can make a move seen), each subscribed with
``aiml webhook register``. A registered model has two pointer versions on the stand-in;
each move flips ``@production`` between them with ``MlflowClient`` while every front is
polled (``/inference/infer``, one request every ``--poll-ms``) until it serves the new
version. Reported per configuration: p50/p99/max from the start of the MLflow call to the
first answer from the new version, on the one front, then on both (the later of the two),
and the MLflow call's own duration.

    .venv/bin/python -m bench.alias_move --moves 20
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from mlflow import MlflowClient

from tests.fakes.ollama_server import OllamaStandIn
from tests.fakes.processes import Process, aiml_serve, mlflow_server
from tests.fakes.servers import ServerThread

SECRET = "bench-webhook-secret"
MODEL = "moved"
VERSIONS = {1: "llama2:7b", 2: "llama2:13b"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moves", type=int, default=20, help="alias moves per configuration")
    parser.add_argument("--poll-ms", type=float, default=2.0, help="pause between polls")
    parser.add_argument("--deadline-s", type=float, default=10.0, help="give up on a move")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="aiml-bench-alias-"))
    registry = start_registry(work / "mlflow")
    ollama = OllamaStandIn()
    for name in VERSIONS.values():
        ollama.add(name)
    stand_in = ServerThread(ollama.app(), lifespan="off").start()
    url = registry.health_url.removesuffix("/health")
    env = front_env(url, stand_in.url)
    fronts: list[Process] = []
    try:
        mlflow = MlflowClient(tracking_uri=url)
        for count in (1, 2):
            while len(fronts) < count:
                fronts.append(start_front(work / f"front-{len(fronts)}", env))
            if count == 1:
                register(base(fronts[0]))
            times, calls = run(mlflow, [base(f) for f in fronts], args)
            report(count, times, calls)
    finally:
        for front in fronts:
            front.stop()
        stand_in.stop()
        registry.stop()
    print(f"(machine: {os.cpu_count()} CPUs; work folder {work})")


def start_registry(folder: Path) -> Process:
    """A real ``mlflow server`` on sqlite that sends webhooks to loopback, its webhook list
    cached 1 s (MLflow's default is 60 s)."""
    registry = mlflow_server(folder)
    registry.env |= {
        "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
        "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
        "MLFLOW_WEBHOOK_CACHE_TTL": "1",
    }
    registry.start()
    return registry


def front_env(registry_url: str, ollama_url: str) -> dict[str, str]:
    """A front's settings: the registry, the stand-in, a TTL of 300 s (only a webhook makes
    a change seen sooner) and the webhooks' secret."""
    return {
        "MLFLOW_TRACKING_URI": registry_url,
        "OLLAMA_HOST": ollama_url,
        "AIML_RESOLVE_TTL_S": "300",
        "AIML_MLFLOW_WEBHOOK_SECRET": SECRET,
    }


def start_front(folder: Path, env: dict[str, str]) -> Process:
    front = aiml_serve(folder, env)
    front.start()
    subscribed = subprocess.run(
        [sys.executable, "-m", "aiml", "webhook", "register", "--url", base(front),
         "--name", folder.name],
        env={**os.environ, **env, "AIML_HOME": str(folder / "cli-home")},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    print(subscribed.stdout.strip())
    return front


def base(front: Process) -> str:
    return front.health_url.removesuffix("/health/live")


def register(url: str) -> None:
    with httpx.Client(base_url=url, timeout=60) as client:
        for version, local in VERSIONS.items():
            body = {"local_model_name": local, "registered_name": MODEL, "task": "chat",
                    "alias": "production" if version == 1 else None}  # fmt: skip
            client.post("/models/register_ollama", json=body).raise_for_status()


def served(client: httpx.Client) -> int:
    body = {"task": "chat", "engine": "ollama", "model_name": f"{MODEL}@production",
            "data": {"messages": [{"role": "user", "content": "hi"}]}}  # fmt: skip
    answer = client.post("/inference/infer", json=body)
    answer.raise_for_status()
    version: int = answer.json()["resolved"]["registry_version"]
    return version


def run(
    mlflow: MlflowClient, urls: list[str], args: argparse.Namespace
) -> tuple[list[list[float]], list[float]]:
    """Per move, each front's seconds from the call's start to the new version's first
    answer; and the MLflow call's own seconds. Warm-up moves first, until one reaches every
    front (MLflow caches its webhook list for a second: a front just subscribed may miss)."""
    clients = [httpx.Client(base_url=url, timeout=30) for url in urls]
    times: list[list[float]] = []
    calls: list[float] = []
    try:
        with ThreadPoolExecutor(len(clients)) as pool:
            for _ in range(10):
                seen, _call = move(mlflow, clients, pool, args)
                if math.inf not in seen:
                    break
                for client in clients:  # missed: start again from what the registry says
                    client.post("/inference/clear-cache").raise_for_status()
                time.sleep(1.1)
            else:
                raise RuntimeError("the webhooks never reached every front")
            for _ in range(args.moves):
                seen, call = move(mlflow, clients, pool, args)
                times.append(seen)
                calls.append(call)
    finally:
        for client in clients:
            client.close()
    return times, calls


def move(
    mlflow: MlflowClient,
    clients: list[httpx.Client],
    pool: ThreadPoolExecutor,
    args: argparse.Namespace,
) -> tuple[list[float], float]:
    """Flip @production once, every front polled; each front's seconds (inf: missed)."""
    current = served(clients[0])
    if any(served(client) != current for client in clients):
        raise RuntimeError("the fronts disagree before the move")
    target = 3 - current
    started = time.perf_counter()

    def wait(client: httpx.Client) -> float:
        while served(client) != target:
            if time.perf_counter() - started > args.deadline_s:
                return math.inf
            time.sleep(args.poll_ms / 1000)
        return time.perf_counter() - started

    polls = [pool.submit(wait, client) for client in clients]
    mlflow.set_registered_model_alias(MODEL, "production", str(target))
    call = time.perf_counter() - started
    return [poll.result() for poll in polls], call


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]  # nearest rank


def report(fronts: int, times: list[list[float]], calls: list[float]) -> None:
    def line(label: str, values: list[float]) -> str:
        ms = [v * 1000 for v in values]
        return (f"  {label:<34} p50 {statistics.median(ms):7.1f} ms  p99 {quantile(ms, 0.99):7.1f}"
                f" ms  max {max(ms):7.1f} ms")  # fmt: skip

    print(f"\n{fronts} front{'s' if fronts > 1 else ''}, {len(times)} moves (webhooks, TTL 300 s)")
    print(line("set_registered_model_alias call", calls))
    for index in range(fronts):
        print(line(f"served by front {index}", [t[index] for t in times]))
    if fronts > 1:
        print(line("served by every front", [max(t) for t in times]))
    missed = sum(1 for t in times if math.inf in t)
    if missed:
        print(f"  {missed} moves not served within the deadline")


if __name__ == "__main__":
    main()
