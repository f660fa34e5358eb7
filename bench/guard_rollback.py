"""Time from a failing canary candidate's first error to its weight being 0 everywhere, on
one front and on two.

A real ``mlflow server`` with webhooks, the stand-in Ollama server and ``aiml serve``
fronts (as bench/alias_move.py starts them, TTL 300 s, each subscribed to the webhooks),
with the guard's default settings unless given. ``guarded@production`` is a pointer
version on the stand-in; each trial registers a new candidate version, on a stand-in model
that answers 500 (``fails_with``), and declares it a 50% canary with ``MlflowClient``
(the version tag, as a pipeline would). Callers, each a new OpenAI ``user``, then chat at
a steady ``--rate`` spread round-robin over the fronts, until the candidate is out.

"Weight 0 everywhere" is measured on the callers' own requests, without probes: a caller
whose sticky choice is the candidate (the same hash the resolver uses) is answered by the
stable version only once its front holds the canary at weight 0. A front is rolled back at
the send time of the first such caller's request answered by the stable version after the
last request that front let the candidate answer; everywhere, at the latest of the fronts.
The time is from the first 500 a caller received (on any front); its resolution is the
spacing of those callers on a front (about ``2 * fronts / rate``). Each trial starts at a
random point of the guards' rounds (``AIML_GUARD_CHECK_S`` apart). A front's first lookup
after the canary's tag is set checks the candidate, so the chats queued behind it go at
once: the first few tenths of a second run above the rate, as they would in production. Reported per
configuration: p50/p99/max of that time, per front and everywhere, the 500s callers got
per trial, and which fronts' guards tripped; where one did, the other front heard of the
trip through MLflow's webhook, and the time between the two fronts' rollbacks is shown.

    .venv/bin/python -m bench.guard_rollback --trials 20
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
from mlflow import MlflowClient

from aiml.inference.canary import chooses_candidate
from bench.alias_move import base, front_env, quantile, start_front, start_registry
from tests.fakes.ollama_server import OllamaStandIn
from tests.fakes.processes import Process
from tests.fakes.servers import ServerThread

MODEL = "guarded"
ALIAS = "production"
STABLE, BROKEN = "llama2:7b", "broken:1b"
WEIGHT = 50.0
#: Candidate-share callers a front must serve from the stable version to end a trial.
SETTLED = 20


@dataclass(frozen=True, slots=True)
class Answer:
    front: int
    to_candidate: bool  # the caller's sticky choice is the candidate
    sent: float
    answered: float
    status: int
    version: str | None


@dataclass(frozen=True, slots=True)
class Trial:
    rolled_back: list[float]  # per front, seconds after the first error (inf: not)
    errors: int  # 500s callers received
    tripped: list[int]  # the fronts whose guard tripped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20, help="trials per configuration")
    parser.add_argument("--rate", type=float, default=100.0, help="chats per second, all fronts")
    parser.add_argument("--deadline-s", type=float, default=30.0, help="give up on a trial")
    parser.add_argument("--check-s", help="AIML_GUARD_CHECK_S (default: the setting's)")
    parser.add_argument("--min-requests", help="AIML_GUARD_MIN_REQUESTS (default: the setting's)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="aiml-bench-guard-"))
    registry = start_registry(work / "mlflow")
    ollama = OllamaStandIn()
    ollama.add(STABLE)
    ollama.add(BROKEN, fails_with="llama runner process has terminated")
    stand_in = ServerThread(ollama.app(), lifespan="off").start()
    url = registry.health_url.removesuffix("/health")
    env = front_env(url, stand_in.url)
    for option, setting in ((args.check_s, "CHECK_S"), (args.min_requests, "MIN_REQUESTS")):
        if option is not None:
            env[f"AIML_GUARD_{setting}"] = option
    fronts: list[Process] = []
    try:
        mlflow = MlflowClient(tracking_uri=url)
        for count in (1, 2):
            while len(fronts) < count:
                fronts.append(start_front(work / f"front-{len(fronts)}", env))
            urls = [base(f) for f in fronts]
            if count == 1:
                register(urls[0], STABLE, alias=ALIAS)
            warm_up(mlflow, urls, args)
            trials = [trial(mlflow, urls, args, n) for n in range(args.trials)]
            report(count, trials, args)
    finally:
        for front in fronts:
            front.stop()
        stand_in.stop()
        registry.stop()
    guard = {k: v for k, v in env.items() if k.startswith("AIML_GUARD_")} or "defaults"
    print(f"(guard settings: {guard}; machine: {os.cpu_count()} CPUs; work folder {work})")


def register(url: str, local: str, *, alias: str | None = None) -> int:
    body = {"local_model_name": local, "registered_name": MODEL, "task": "chat", "alias": alias}
    answer = httpx.post(f"{url}/models/register_ollama", json=body, timeout=60)
    answer.raise_for_status()
    version: int = answer.json()["version"]
    return version


def warm_up(mlflow: MlflowClient, urls: list[str], args: argparse.Namespace) -> None:
    """Uncounted trials until one reaches every front (MLflow caches its webhook list for a
    second: a front just subscribed may miss a delivery)."""
    for _ in range(5):
        if math.inf not in trial(mlflow, urls, args, -1).rolled_back:
            return
        for url in urls:  # missed: start again from what the registry says
            httpx.post(f"{url}/inference/clear-cache", timeout=30).raise_for_status()
        time.sleep(1.1)
    raise RuntimeError("the guard's trip never reached every front")


def trial(mlflow: MlflowClient, urls: list[str], args: argparse.Namespace, number: int) -> Trial:
    """One failing candidate, declared in MLflow, chatted to until every front is rolled back
    (or the deadline)."""
    # Each trial at a random point of the guards' rounds: one started right after the last
    # would start at the same point (the last trip ended it), and always wait as long.
    time.sleep(random.uniform(0, float(args.check_s or 1.0)))
    candidate = register(urls[0], BROKEN)
    tag = f"aiml.canary.{ALIAS}"
    mlflow.set_model_version_tag(MODEL, "1", tag, f"{candidate}:{WEIGHT:g}")
    answers: list[Answer] = []
    lock = threading.Lock()
    local = threading.local()
    clients: list[httpx.Client] = []  # one a thread, closed with the trial

    def chat(index: int) -> None:
        front = index % len(urls)
        user = f"trial-{number}-{candidate}-caller-{index}"
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(timeout=30)
            with lock:
                clients.append(client)
        body = {"model": f"{MODEL}@{ALIAS}", "user": user,
                "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
        sent = time.perf_counter()
        answer = client.post(f"{urls[front]}/v1/chat/completions", json=body)
        done = time.perf_counter()
        share = chooses_candidate(MODEL, ALIAS, f"user:{user}", WEIGHT)
        row = Answer(front, share, sent, done, answer.status_code,
                     answer.headers.get("x-aiml-model-version"))  # fmt: skip
        with lock:
            answers.append(row)

    started = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        for index in range(int(args.deadline_s * args.rate)):
            wait = started + index / args.rate - time.perf_counter()
            if wait > 0:
                time.sleep(wait)  # pacing: a steady offered rate
            pool.submit(chat, index)
            if index % 10 == 0:
                with lock:
                    if settled(list(answers), len(urls)):
                        break
    for client in clients:
        client.close()
    outcome = measure(answers, len(urls))
    weight = mlflow.get_model_version(MODEL, "1").tags.get(tag)
    if math.inf not in outcome.rolled_back and weight != f"{candidate}:0":
        raise RuntimeError(f"rolled back without the registry saying so: {tag}={weight}")
    tripped = [
        front
        for front, url in enumerate(urls)
        if any(
            trip["candidate"] == candidate
            for trip in httpx.get(f"{url}/inference/stats", timeout=30).json()["stats"]["guard"]
        )
    ]
    return Trial(outcome.rolled_back, outcome.errors, tripped)


def since(answers: list[Answer], front: int) -> float | None:
    """When ``front`` last let the candidate answer (sent), or, if it never did, when the
    candidate first answered anywhere; ``None`` before any failure."""
    failed = [a for a in answers if a.status >= 500]
    if not failed:
        return None
    mine = [a.sent for a in failed if a.front == front]
    return max(mine) if mine else min(a.sent for a in failed)


def stable_since(answers: list[Answer], front: int, start: float) -> list[float]:
    """When ``front``'s candidate-share callers sent after ``start`` were answered by the
    stable version."""
    mine = [a for a in answers if a.front == front and a.to_candidate and a.sent > start]
    return [a.sent for a in mine if a.status == 200]


def settled(answers: list[Answer], fronts: int) -> bool:
    """Whether every front has served ``SETTLED`` candidate-share callers from the stable
    version since the candidate last answered there."""
    starts = [since(answers, front) for front in range(fronts)]
    return all(
        start is not None and len(stable_since(answers, front, start)) >= SETTLED
        for front, start in enumerate(starts)
    )


def measure(answers: list[Answer], fronts: int) -> Trial:
    failures = [a for a in answers if a.status >= 500]
    if not failures:
        return Trial([math.inf] * fronts, 0, [])
    first_error = min(a.answered for a in failures)
    rolled_back = []
    for front in range(fronts):
        mine = [a for a in answers if a.front == front]
        served = Counter((a.status, a.version) for a in mine if a.status < 500)
        if set(served) - {(200, f"{MODEL}/1")}:  # the stable version answers, or a 5xx
            raise RuntimeError(f"unexpected answers on front {front}: {served}")
        start = since(answers, front)
        assert start is not None  # there were failures
        stable = stable_since(answers, front, start)
        # A front that never let the candidate answer was rolled back from the start (0).
        rolled_back.append(max(0.0, min(stable) - first_error) if stable else math.inf)
    return Trial(rolled_back, len(failures), [])


def report(fronts: int, trials: list[Trial], args: argparse.Namespace) -> None:
    def line(label: str, values: list[float], unit: str = " ms", scale: float = 1000) -> str:
        shown = [v * scale for v in values if v != math.inf]
        if not shown:
            return f"  {label:<40} none"
        digits = 1 if unit else 0
        p50, p99, top = statistics.median(shown), quantile(shown, 0.99), max(shown)
        return (f"  {label:<40} p50 {p50:7.{digits}f}{unit}  p99 {p99:7.{digits}f}{unit}"
                f"  max {top:7.{digits}f}{unit}")  # fmt: skip

    plural = "s" if fronts > 1 else ""
    print(f"\n{fronts} front{plural}, {len(trials)} trials, {args.rate:g} chats/s over the "
          f"front{plural}, candidate at {WEIGHT:g}% answering 500")  # fmt: skip
    for front in range(fronts):
        per_front = [t.rolled_back[front] for t in trials]
        print(line(f"first error -> front {front} rolled back", per_front))
    if fronts > 1:
        print(line("first error -> every front rolled back", [max(t.rolled_back) for t in trials]))
        # Where one guard tripped, the other front heard of it through MLflow's webhook.
        lags = [t.rolled_back[1 - t.tripped[0]] - t.rolled_back[t.tripped[0]]
                for t in trials if len(t.tripped) == 1]  # fmt: skip
        print(line("the front that tripped -> the other", lags))
    print(line("500s callers got, per trial", [float(t.errors) for t in trials], "", 1))
    tripped = Counter(tuple(t.tripped) for t in trials)
    print("  guards that tripped: " + ", ".join(
        f"{'+'.join(f'front {f}' for f in key) or 'none'} in {n}" for key, n in tripped.items()
    ))  # fmt: skip
    missed = sum(1 for t in trials if math.inf in t.rolled_back)
    if missed:
        print(f"  {missed} trials not rolled back everywhere within {args.deadline_s:g} s")


if __name__ == "__main__":
    main()
