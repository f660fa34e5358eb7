"""What a canary adds to a warm resolution: ``ModelResolver.resolve`` of ``m@production``
with no canary and with a 10% canary, interleaved in rounds on the same resolver objects
(a real sqlite MLflow registry, the stand-in Ollama engine), each call timed alone.

    .venv/bin/python -m bench.canary_choice --rounds 20 --calls 2000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient

from aiml.engines.remote.ollama import OllamaEngine
from aiml.inference.resolver import ModelResolver
from aiml.observability.stats import Stats
from aiml.registry.mlflow import MlflowRegistry
from aiml.types import ModelRef
from tests.fakes.ollama_server import OllamaStandIn
from tests.fakes.servers import ServerThread


async def _measure(rounds: int, calls: int) -> dict[str, list[float]]:
    folder = Path(tempfile.mkdtemp(prefix="aiml-canary-bench-"))
    uri = f"sqlite:///{folder / 'registry.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    for name in ("plain", "split"):
        client.create_registered_model(name)
        for model in ("llama2:7b", "llama2:13b"):
            tags = {"inference_engine": "ollama", "inference_task": "chat",
                    "ollama_model_name": model}  # fmt: skip
            client.create_model_version(name, source=str(folder), tags=tags)
        client.set_registered_model_alias(name, "production", "1")
    client.set_model_version_tag("split", "1", "aiml.canary.production", "2:10")
    state = OllamaStandIn()
    state.add("llama2:7b")
    state.add("llama2:13b")
    with ServerThread(state.app(), lifespan="off") as stand_in:
        engine = OllamaEngine(stand_in.url, timeout_s=5, connect_timeout_s=1)
        registry = MlflowRegistry(client, uri=uri, artifact_location=None)
        resolver = ModelResolver({"ollama": engine}, registry, ttl_s=3600, stats=Stats())
        refs = {"no canary": ModelRef("plain", alias="production"),
                "10% canary": ModelRef("split", alias="production")}  # fmt: skip
        users = [f"user-{i}" for i in range(calls)]
        for ref in refs.values():  # warm: both versions resolved on the engine
            for user in users[:200]:
                await resolver.resolve(ref, "ollama", affinity=user)
        timings: dict[str, list[float]] = {label: [] for label in refs}
        for _ in range(rounds):
            for label, ref in refs.items():
                for user in users:
                    start = time.perf_counter_ns()
                    await resolver.resolve(ref, "ollama", affinity=user)
                    timings[label].append((time.perf_counter_ns() - start) / 1000)
        await engine.aclose()
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    timings = asyncio.run(_measure(args.rounds, args.calls))
    base = statistics.median(timings["no canary"])
    for label, values in timings.items():
        values.sort()
        p50, p99 = statistics.median(values), values[int(len(values) * 0.99)]
        print(f"{label:<12} n={len(values)}  p50 {p50:.2f} us  p99 {p99:.2f} us  "
              f"(p50 {p50 - base:+.2f} us against no canary)")  # fmt: skip


if __name__ == "__main__":
    main()
