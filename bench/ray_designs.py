"""Which HTTP front for a Ray Serve cluster: Ray's own proxy, or aiml's uvicorn calling handles.

One run, one ``ray start --head`` on this machine, a trivial JSON echo served three ways,
measured alternately in rounds (p50/p99 of sequential calls, then requests/s with 16
clients at once):

* **ray proxy**: the echo is a Ray Serve deployment with a FastAPI ingress behind Ray's HTTP
  proxy (the design aiml did not take);
* **front + handle**: a plain uvicorn process (as ``aiml serve --ray``) whose route calls
  an echo deployment through a deployment handle (aiml's design for local models);
* **bare uvicorn**: the same route answering itself (aiml's remote-engine path).

    .venv/bin/python -m bench.ray_designs --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.fakes.processes import Process
from tests.fakes.servers import free_port

BODY = {"messages": [{"role": "user", "content": "hello"}]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="aiml-bench-designs-"))
    os.environ.update({"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"})
    ray_bin = str(Path(sys.executable).parent / "ray")
    ray_port, proxy_port = free_port(), free_port()
    subprocess.run(
        [ray_bin, "start", "--head", f"--port={ray_port}", "--num-cpus=2",
         "--include-dashboard=false", "--node-ip-address=127.0.0.1", "--disable-usage-stats"],
        check=True, capture_output=True,
    )  # fmt: skip
    address = f"127.0.0.1:{ray_port}"
    fronts: list[Process] = []
    try:
        deploy = [sys.executable, "-m", "bench.peers.ray_echo", "deploy", address, str(proxy_port)]
        subprocess.run(deploy, check=True, capture_output=True)
        for mode in ("handle", "bare"):
            port = free_port()
            argv = [sys.executable, "-m", "uvicorn", "bench.peers.ray_echo:app",
                    "--port", str(port), "--log-level", "warning"]  # fmt: skip
            env = {**os.environ, "ECHO_MODE": mode, "RAY_ADDRESS": address}
            health = f"http://127.0.0.1:{port}/health"
            fronts.append(Process(argv, env=env, log=work / f"{mode}.log", health_url=health))
            fronts[-1].start(timeout_s=120)
        sides = {
            "ray proxy": f"http://127.0.0.1:{proxy_port}/echo",
            "front + handle": fronts[0].health_url.replace("/health", "/echo"),
            "bare uvicorn": fronts[1].health_url.replace("/health", "/echo"),
        }
        latency: dict[str, list[float]] = {side: [] for side in sides}
        rate: dict[str, list[float]] = {side: [] for side in sides}
        with httpx.Client(timeout=60) as http:
            for url in sides.values():
                for _ in range(20):  # warm every path
                    http.post(url, json=BODY).raise_for_status()
            for _ in range(args.rounds):
                for side, url in sides.items():
                    for _ in range(args.calls):
                        started = time.perf_counter()
                        http.post(url, json=BODY).raise_for_status()
                        latency[side].append((time.perf_counter() - started) * 1000)
                    rate[side].append(throughput(url, args.calls * 2))
        print(f"{'design':<16} {'p50 ms':>8} {'p99 ms':>8} {'req/s (16 clients)':>20}")
        for side in sides:
            ordered = sorted(latency[side])
            p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
            print(f"{side:<16} {statistics.median(ordered):>8.2f} {p99:>8.2f} "
                  f"{statistics.median(rate[side]):>20.0f}")  # fmt: skip
    finally:
        for front in fronts:
            front.stop()
        subprocess.run([ray_bin, "stop", "--force"], capture_output=True)


def throughput(url: str, calls: int) -> float:
    """Requests/s with 16 clients, each on its own connection."""

    def client(count: int) -> None:
        with httpx.Client(timeout=60) as http:
            for _ in range(count):
                http.post(url, json=BODY).raise_for_status()

    started = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(client, [calls // 16] * 16))
    return (calls // 16 * 16) / (time.perf_counter() - started)


if __name__ == "__main__":
    main()
