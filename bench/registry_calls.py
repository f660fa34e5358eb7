"""Registry calls per cold and per warm request, counted where they arrive.

Starts a real ``mlflow server`` holding hundreds of registered models, a stand-in Ollama
server, and ``aiml serve`` against both; then drives ``/inference/infer`` as the earlier
system's clients do and counts the MLflow REST requests in the server's own access log
(and, as a cross-check, aiml's ``registry_lookups`` stat).

    .venv/bin/python -m bench.registry_calls --models 300 --targets 20
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from mlflow import MlflowClient

from tests.fakes.ollama_server import OllamaStandIn
from tests.fakes.processes import aiml_serve, mlflow_server
from tests.fakes.servers import ServerThread

_REST = re.compile(r'"(GET|POST|PATCH|DELETE) /(?:ajax-)?api/2\.0/mlflow/')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=300, help="registered models in all")
    parser.add_argument("--targets", type=int, default=20, help="models the clients ask for")
    parser.add_argument("--warm", type=int, default=5, help="warm requests per cold one")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="aiml-bench-"))
    registry = mlflow_server(work / "mlflow")
    registry.start()
    ollama = OllamaStandIn()
    ollama.add("llama2:7b")
    ollama_server = ServerThread(ollama.app(), lifespan="off").start()
    url = registry.health_url.removesuffix("/health")
    client = MlflowClient(tracking_uri=url)
    # As the earlier system did: a small pointer file logged to a run is the version source.
    run = client.create_run(client.create_experiment("pointers"))
    client.log_dict(run.info.run_id, {"ollama_model_name": "llama2:7b"}, "model/pointer.json")

    def register(index: int) -> None:
        name = f"team-model-{index:04d}"
        client.create_registered_model(name)
        version = client.create_model_version(
            name,
            f"runs:/{run.info.run_id}/model",
            run_id=run.info.run_id,
            tags={"ollama_model_name": "llama2:7b"},
            await_creation_for=0,
        )
        client.set_registered_model_alias(name, "production", version.version)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(register, range(args.models)))
    aiml = aiml_serve(
        work / "aiml", env={"MLFLOW_TRACKING_URI": url, "OLLAMA_HOST": ollama_server.url}
    )
    aiml.start()
    log = registry.log

    def arrived() -> int:
        return len(_REST.findall(log.read_text(errors="replace")))

    rows = []
    try:
        with httpx.Client(
            base_url=aiml.health_url.removesuffix("/health/live"), timeout=30
        ) as http:
            step = max(1, args.models // args.targets)
            targets = [f"team-model-{i:04d}" for i in range(0, args.models, step)][: args.targets]
            for form, make in (
                ("name (latest)", lambda n: n),
                ("name@alias", lambda n: f"{n}@production"),
                ("name/version", lambda n: f"{n}/1"),
                ("models:/name/version", lambda n: f"models:/{n}/1"),
                ("models:/name@alias", lambda n: f"models:/{n}@production"),
            ):
                cold, warm = [], []
                for name in targets:
                    reference = make(name)
                    if form.startswith("models:/"):  # same key as the short form: clear first
                        http.post("/inference/clear-cache")
                    before = arrived()
                    assert _infer(http, reference) == 200
                    cold.append(arrived() - before)
                    before = arrived()
                    for _ in range(args.warm):
                        assert _infer(http, reference) == 200
                    warm.append((arrived() - before) / args.warm)
                rows.append((form, cold, warm))
            stats = http.get("/inference/stats").json()["stats"]
    finally:
        aiml.stop()
        registry.stop()
        ollama_server.stop()

    print(
        f"\nregistered models: {args.models}; models asked for: {len(targets)}; "
        f"warm requests per model: {args.warm}"
    )
    print(f"{'reference form':<22} {'cold calls (mean/max)':>22} {'warm calls (mean/max)':>22}")
    for form, cold, warm in rows:
        print(
            f"{form:<22} {statistics.mean(cold):>13.2f} / {max(cold):<6} "
            f"{statistics.mean(warm):>13.2f} / {max(warm):<6}"
        )
    print(
        f"aiml's own count: registry_lookups={stats['registry_lookups']}, "
        f"resolutions={stats['resolutions']}, cache hits={stats['cache']['hits']}"
    )


def _infer(http: httpx.Client, reference: str) -> int:
    body = {
        "task": "text-generation",
        "engine": "ollama",
        "model_name": reference,
        "data": {"inputs": "hello"},
    }
    return http.post("/inference/infer", json=body).status_code


if __name__ == "__main__":
    main()
