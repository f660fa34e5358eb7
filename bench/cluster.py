"""What running on Ray Serve costs: a team front (``aiml serve --ray``) against single-process aiml.

One run, on this machine: a ``ray start --head`` cluster with one model replica, the
Ollama stand-in as the remote engine, SmolLM2-135M as the local model. Both aiml
processes use the same sqlite registry; measurements alternate between them in blocks:

* the remote-engine path: ``/api/chat`` (non-streaming) through each aiml;
* the local-model path: a 1-token non-streaming generation, and a stream's first token;
* a streamed 128-token generation's tokens/s;
* for reference, a trivial call (``health``) to the model replica through a deployment
  handle from this process, a plain process connected to the cluster;
* after killing the model replica: the time until a request is served again (Ray starts
  a new replica, which loads the model from its node's artifact cache).

    .venv/bin/python -m bench.cluster --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from aiml.bundled import BUNDLED
from tests.fakes.processes import Process, aiml_serve
from tests.fakes.servers import free_port

BODY_LOCAL = {"task": "text-generation", "engine": "llamacpp", "model_name": "smol",
              "data": {"inputs": "Once upon a time"}}  # fmt: skip
CHAT = {"model": "llama2-7b-chat", "stream": False,
        "messages": [{"role": "user", "content": "hello"}]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=100, help="remote-path calls per block")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="aiml-bench-cluster-"))
    ray_bin = str(Path(sys.executable).parent / "ray")
    ray_port = free_port()
    os.environ.update({"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"})
    quiet = dict(os.environ)
    subprocess.run(
        [ray_bin, "start", "--head", f"--port={ray_port}", "--num-cpus=2",
         "--include-dashboard=false", "--node-ip-address=127.0.0.1", "--disable-usage-stats"],
        check=True, env=quiet, capture_output=True,
    )  # fmt: skip
    standin_port = free_port()
    standin = Process(
        [sys.executable, "-m", "uvicorn", "bench.peers.ollama_standin:app",
         "--port", str(standin_port), "--log-level", "warning"],
        env={**os.environ, "STANDIN_MODELS": "llama2:7b"}, log=work / "standin.log",
        health_url=f"http://127.0.0.1:{standin_port}/api/version",
    )  # fmt: skip
    env = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'registry.db'}",
        "OLLAMA_HOST": f"http://127.0.0.1:{standin_port}",
        "AIML_ENGINES": "ollama,llamacpp",
        "AIML_LLAMACPP_N_CTX": "512",
        "AIML_RAY_MIN_REPLICAS": "1",
        "AIML_RAY_MAX_REPLICAS": "1",
        "AIML_RAY_REPLICA_CPUS": "1",
        "RAY_ADDRESS": f"127.0.0.1:{ray_port}",
    }
    smol = next(m for m in BUNDLED if m.registered_name == "smollm2-135m-instruct").locate(work)
    cli = [sys.executable, "-m", "aiml"]
    full = {**os.environ, **env, "AIML_HOME": str(work / "home")}
    single = aiml_serve(work / "single", env)
    team = aiml_serve(work / "team", env, extra_args=["--ray"])
    try:
        standin.start()
        subprocess.run([*cli, "register", str(smol), "smol", "--task", "text-generation"],
                       env=full, check=True, capture_output=True)  # fmt: skip
        subprocess.run([*cli, "register-ollama", "llama2:7b", "llama2-7b-chat"],
                       env=full, check=True, capture_output=True)  # fmt: skip
        single.start(timeout_s=120)
        team.start(timeout_s=300)
        sides = {"single process": base(single), "ray front": base(team)}
        results: dict[tuple[str, str], list[float]] = {}
        with httpx.Client(timeout=300) as http:
            for url in sides.values():  # warm: resolve, load the model
                http.post(f"{url}/api/chat", json=CHAT).raise_for_status()
                local(http, url, 1)
            handle = model_handle(ray_port)
            handle_calls: list[float] = []
            for _ in range(args.rounds):
                for side, url in sides.items():
                    measure(results, side, http, url, args.calls)
                for _ in range(args.calls):
                    started = time.perf_counter()
                    handle.health.remote().result()
                    handle_calls.append((time.perf_counter() - started) * 1000)
            report(results, list(sides))
            print(f"\na trivial handle call from a plain process: {percentiles(handle_calls)}")
            print("\nnew replica, cached model:", replaced(http, handle, sides["ray front"]))
    finally:
        import ray

        ray.shutdown()  # leave the cluster before it is stopped
        team.stop()
        single.stop()
        standin.stop()
        subprocess.run([ray_bin, "stop", "--force"], env=quiet, capture_output=True)


def measure(
    results: dict[tuple[str, str], list[float]], side: str, http: httpx.Client, url: str, calls: int
) -> None:
    def add(what: str, value: float) -> None:
        results.setdefault((side, what), []).append(value)

    for _ in range(calls):
        add("remote /api/chat ms", timed(lambda: http.post(f"{url}/api/chat", json=CHAT)))
    for _ in range(calls // 4):
        add("local 1 token ms", timed(lambda: local(http, url, 1)))
    for _ in range(calls // 4):
        add("local stream first token ms", first_token(http, url))
    for _ in range(2):
        add("local stream tok/s", stream_rate(http, url, 128))


def timed(call: Callable[[], httpx.Response]) -> float:
    started = time.perf_counter()
    call().raise_for_status()
    return (time.perf_counter() - started) * 1000


def local(http: httpx.Client, url: str, tokens: int) -> httpx.Response:
    body = {**BODY_LOCAL, "options": {"max_tokens": tokens, "ignore_eos": True}}
    return http.post(f"{url}/inference/infer", json=body)


def first_token(http: httpx.Client, url: str) -> float:
    body = {**BODY_LOCAL, "stream": True, "options": {"max_tokens": 4, "ignore_eos": True}}
    started = time.perf_counter()
    took: float | None = None
    with http.stream("POST", f"{url}/inference/infer", json=body) as response:
        for line in response.iter_lines():
            if took is None and line and not json.loads(line).get("done"):
                took = (time.perf_counter() - started) * 1000
    assert took is not None, "the stream sent no token"
    return took


def stream_rate(http: httpx.Client, url: str, tokens: int) -> float:
    body = {**BODY_LOCAL, "stream": True, "options": {"max_tokens": tokens, "ignore_eos": True}}
    count = 0
    started = time.perf_counter()
    with http.stream("POST", f"{url}/inference/infer", json=body) as response:
        for line in response.iter_lines():
            if line and not json.loads(line).get("done"):
                count += 1
    return count / (time.perf_counter() - started)


def model_handle(ray_port: int) -> Any:
    import ray
    from ray import serve

    ray.init(address=f"127.0.0.1:{ray_port}", log_to_driver=False)
    return serve.get_deployment_handle("ModelReplica", app_name="aiml-models")


def replaced(http: httpx.Client, handle: Any, url: str) -> str:
    """Kill the only model replica; time until a request is served by its successor."""
    import ray

    holder = local(http, url, 1).headers["x-aiml-model-replica"]
    stats = handle.options(multiplexed_model_id="smol/1").stats.remote().result()
    actor = stats["handle"]
    started = time.perf_counter()
    ray.kill(actor)
    while True:
        answer = local(http, url, 1)
        if answer.status_code == 200 and answer.headers["x-aiml-model-replica"] != holder:
            break
    took = time.perf_counter() - started
    return f"{took:.1f} s from the kill to the first answer from the new replica"


def report(results: dict[tuple[str, str], list[float]], sides: list[str]) -> None:
    whats = sorted({what for _, what in results}, key=lambda w: list(results).index((sides[0], w)))
    print(f"{'measure':<30} " + " ".join(f"{s + ' p50':>18} {'p99':>8}" for s in sides) + "  ratio")
    for what in whats:
        cells = []
        medians = []
        for side in sides:
            values = sorted(results[(side, what)])
            medians.append(statistics.median(values))
            p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
            cells.append(f"{medians[-1]:>18.2f} {p99:>8.2f}")
        print(f"{what:<30} " + " ".join(cells) + f"  {medians[1] / medians[0]:>5.2f}"
              f"  (+{medians[1] - medians[0]:.2f})")  # fmt: skip


def percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {statistics.median(ordered):.2f} ms, p99 {p99:.2f} ms"


def base(process: Process) -> str:
    return process.health_url.removesuffix("/health/live")


if __name__ == "__main__":
    main()
