"""The model listings' latency and registry cost: ``GET /v1/models`` and ``/api/tags``.

Starts a real ``mlflow server`` holding registered models with an alias each, and
``aiml serve`` against it; lists once (cold), then ``--rounds`` times (warm) per route, and
counts the MLflow REST requests that arrived in the server's own access log per listing.
Run it against the code before a change with ``PYTHONPATH=<old checkout>/src``.

    .venv/bin/python -m bench.listing --models 30 --rounds 50
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from mlflow import MlflowClient

from tests.fakes.processes import aiml_serve, mlflow_server

_REST = re.compile(r'"(GET|POST|PATCH|DELETE) /(?:ajax-)?api/2\.0/mlflow/')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=30, help="registered models")
    parser.add_argument("--rounds", type=int, default=50, help="warm listings per route")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="aiml-bench-"))
    registry = mlflow_server(work / "mlflow")
    registry.start()
    url = registry.health_url.removesuffix("/health")
    client = MlflowClient(tracking_uri=url)
    run = client.create_run(client.create_experiment("pointers"))
    for index in range(args.models):
        name = f"team-model-{index:03d}"
        client.create_registered_model(name)
        version = client.create_model_version(
            name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id, await_creation_for=0
        )
        client.set_registered_model_alias(name, "production", version.version)
    aiml = aiml_serve(work / "aiml", env={"MLFLOW_TRACKING_URI": url})
    aiml.start()

    def arrived() -> int:
        return len(_REST.findall(registry.log.read_text(errors="replace")))

    try:
        base_url = aiml.health_url.removesuffix("/health/live")
        with httpx.Client(base_url=base_url, timeout=30) as http:
            for route in ("/v1/models", "/api/tags"):
                started = time.perf_counter()
                assert http.get(route).status_code == 200
                cold_ms = (time.perf_counter() - started) * 1000
                before = arrived()
                times = []
                for _ in range(args.rounds):
                    started = time.perf_counter()
                    answer = http.get(route)
                    times.append((time.perf_counter() - started) * 1000)
                    assert answer.status_code == 200, answer.text
                calls = (arrived() - before) / args.rounds
                times.sort()
                print(
                    f"{route:11s} cold {cold_ms:6.1f} ms  warm median "
                    f"{statistics.median(times):5.1f} ms  p90 {times[int(len(times) * 0.9)]:5.1f} "
                    f"ms  MLflow requests per listing {calls:.2f}  ({args.models} models, "
                    f"{args.rounds} rounds)"
                )
    finally:
        aiml.stop()
        registry.stop()


if __name__ == "__main__":
    main()
