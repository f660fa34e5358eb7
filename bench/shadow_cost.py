"""What a shadow adds to the primary's latency, measured side by side.

One ``aiml serve`` front on a sqlite MLflow registry and the stand-in Ollama server (in a
process of its own, so that serving the copies takes no CPU from the timing client). Two
registered models, ``shadowed`` and ``plain``, each with ``@production`` on the same
stand-in model (version 1) and a slow candidate (version 2: the stand-in waits
``--delay-s`` before answering it); ``shadowed``'s version 1 declares a 100% shadow to its
version 2 (``aiml.shadow.production = "2:100"``), ``plain``'s declares none. One caller
chats to both in pairs (which goes first alternates), each request timed alone from the
client, over keep-alive connections: once paced (``--rate`` pairs a second, slow enough
that the copies run and none are dropped: rate x delay < 8, the copies allowed at once),
once flat out (most copies dropped). Reported per run: p50/p99 of each alias's latency and
their ratio, and the front's own shadow counts (compared, dropped, failed).

    .venv/bin/python -m bench.shadow_cost --pairs 2000
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from mlflow import MlflowClient

from bench.alias_move import base, quantile
from tests.fakes.ollama_server import OllamaStandIn
from tests.fakes.processes import aiml_serve
from tests.fakes.servers import ServerThread, free_port

ALIASES = {"shadowed": "shadowed@production", "plain": "plain@production"}
PRIMARY, CANDIDATE = "llama2:7b", "slow:1b"
CHAT = [{"role": "user", "content": "hi"}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2000, help="request pairs per run")
    parser.add_argument("--rate", type=float, default=20.0, help="pairs a second, paced run")
    parser.add_argument("--delay-s", type=float, default=0.2, help="the candidate's delay")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="aiml-bench-shadow-"))
    uri = f"sqlite:///{work / 'registry.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    for name in ALIASES:
        client.create_registered_model(name)
        for model in (PRIMARY, CANDIDATE):
            tags = {"inference_engine": "ollama", "inference_task": "chat",
                    "ollama_model_name": model}  # fmt: skip
            client.create_model_version(name, source=str(work), tags=tags)
        client.set_registered_model_alias(name, "production", "1")
    client.set_model_version_tag("shadowed", "1", "aiml.shadow.production", "2:100")
    spawn = multiprocessing.get_context("spawn")
    port, stop = free_port(), spawn.Event()
    stand_in = spawn.Process(target=serve_stand_in, args=(port, args.delay_s, stop))
    stand_in.start()
    ollama_url = f"http://127.0.0.1:{port}"
    front = aiml_serve(work / "front", {"MLFLOW_TRACKING_URI": uri, "OLLAMA_HOST": ollama_url})
    try:
        wait_for(f"{ollama_url}/api/version")
        front.start()
        with httpx.Client(base_url=base(front), timeout=30) as http:
            warm = 20
            for _ in range(warm):  # warm: both versions resolved, connections open
                for model in ALIASES.values():
                    timed(http, model)
            before = shadow_counts(http, warm)
            for label, rate in ((f"paced, {args.rate:g} pairs/s", args.rate), ("flat out", None)):
                latencies = run(http, args.pairs, rate)
                after = shadow_counts(http, sum(before.values()) + args.pairs)
                report(label, latencies, {k: after[k] - before[k] for k in after})
                before = after
    finally:
        front.stop()
        stop.set()
        stand_in.join(timeout=30)
    print(f"(candidate delay {args.delay_s:g} s; machine: {os.cpu_count()} CPUs; work {work})")


def serve_stand_in(port: int, delay_s: float, stop: Any) -> None:
    """The stand-in Ollama server until ``stop`` is set, in a process of its own: the
    copies' answers cost the stand-in CPU, which must not be the timing client's."""
    ollama = OllamaStandIn()
    ollama.add(PRIMARY)
    ollama.add(CANDIDATE, delay_s=delay_s)
    with ServerThread(ollama.app(), port=port, lifespan="off"):
        stop.wait()


def wait_for(url: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(url, timeout=1).raise_for_status()
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # the next look


def timed(http: httpx.Client, model: str) -> float:
    started = time.perf_counter()
    answer = http.post("/v1/chat/completions", json={"model": model, "messages": CHAT})
    seconds = time.perf_counter() - started
    served = answer.headers.get("x-aiml-model-version")
    if answer.status_code != 200 or served != f"{model.split('@')[0]}/1":
        raise RuntimeError(f"{model}: {answer.status_code} {answer.text[:200]}")
    return seconds


def run(http: httpx.Client, pairs: int, rate: float | None) -> dict[str, list[float]]:
    """Each alias's latencies over ``pairs`` pairs, interleaved (``rate``: pairs a second;
    ``None``: back to back)."""
    latencies: dict[str, list[float]] = {label: [] for label in ALIASES}
    order = list(ALIASES.items())
    started = time.perf_counter()
    for index in range(pairs):
        if rate is not None:
            wait = started + index / rate - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
        for label, model in order if index % 2 == 0 else order[::-1]:
            latencies[label].append(timed(http, model))
    return latencies


def shadow_counts(http: httpx.Client, offered: int) -> dict[str, int]:
    """The front's counts for the shadow once ``offered`` copies have ended (compared,
    dropped or failed): the last ones end within the candidate's delay."""
    deadline = time.monotonic() + 30
    while True:
        stats = http.get("/inference/stats").json()["stats"]
        shadow: dict[str, Any] = stats["shadow"].get("shadowed@production -> 2", {})
        counts = {key: int(shadow.get(key, 0)) for key in ("compared", "dropped", "failed")}
        if sum(counts.values()) >= offered:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{offered} copies offered, {counts} ended")
        time.sleep(0.05)  # the next look
    if "plain@production -> 2" in stats["shadow"]:
        raise RuntimeError("the unshadowed alias was shadowed")
    return counts


def report(label: str, latencies: dict[str, list[float]], counts: dict[str, int]) -> None:
    pairs = len(latencies["plain"])
    print(f"\n{label}: {pairs} pairs, interleaved")
    p50s, p99s = {}, {}
    for alias, values in latencies.items():
        ms = [v * 1000 for v in values]
        p50s[alias], p99s[alias] = statistics.median(ms), quantile(ms, 0.99)
        print(f"  {ALIASES[alias]:<22} p50 {p50s[alias]:6.3f} ms  p99 {p99s[alias]:6.3f} ms")
    print(f"  shadowed / plain       p50 {p50s['shadowed'] / p50s['plain']:6.3f}     "
          f"p99 {p99s['shadowed'] / p99s['plain']:6.3f}")  # fmt: skip
    offered = counts["compared"] + counts["dropped"] + counts["failed"]
    print(f"  shadow copies: {offered} offered, {counts['compared']} compared, "
          f"{counts['dropped']} dropped, {counts['failed']} failed")  # fmt: skip


if __name__ == "__main__":
    main()
