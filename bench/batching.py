"""Many users of one llama.cpp model: aiml's continuous batching against llama-server.

For SmolLM2-135M and Gemma-3-270M, at each concurrency (default 1, 2, 4, 8, 16), clients
stream ``POST /v1/completions`` with a ~30-token prompt (unique per request, so no side
gets a free prefix) and exactly ``--tokens`` new tokens (``ignore_eos``), against

* aiml (``aiml serve``, ``AIML_LLAMACPP_PARALLEL``), through its OpenAI surface, and
* llama.cpp's own ``llama-server -np 8``, built here from the llama.cpp sources vendored in
  the same llama-cpp-python sdist aiml runs on (a benchmark-only peer: cached under
  ``~/.cache/aiml/llama-server-<version>``, never a runtime dependency),

interleaved: for each concurrency both sides run one after the other, ``--rounds`` times.
Reported: aggregate generated tokens/s, p50/p95 time to first token, p50 inter-token time.

    .venv/bin/python -m bench.batching --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from aiml.bundled import BUNDLED
from tests.fakes.processes import Process, aiml_serve
from tests.fakes.servers import free_port

MODELS = {"smollm2-135m-instruct": "SmolLM2-135M", "gemma3-270m": "Gemma-3-270M"}
WORDS = ["the", "quiet", "harbour", "town", "where", "fishing", "boats", "return", "at", "dusk"]


@dataclass
class Run:
    tokens: int = 0
    seconds: float = 0.0
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--concurrency", default="1,2,4,8,16")
    parser.add_argument("--parallel", type=int, default=8, help="aiml's AIML_LLAMACPP_PARALLEL")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    server_bin = build_llama_server()
    work = Path(tempfile.mkdtemp(prefix="aiml-bench-batching-"))
    paths = {m.registered_name: m.locate(work) for m in BUNDLED}
    env = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'registry.db'}",
        "AIML_ENGINES": "llamacpp",
        "AIML_LLAMACPP_PARALLEL": str(args.parallel),
        "AIML_LLAMACPP_THREADS": str(args.threads),
        "AIML_LLAMACPP_N_CTX": "512",
        "AIML_MAX_LOADED_MODELS": "1",
    }
    for name in args.models.split(","):
        register(work, env, name, paths[name])
    print(f"threads {args.threads}, aiml parallel {args.parallel}, {args.tokens} new tokens")
    for name in args.models.split(","):
        aiml = aiml_serve(work / "aiml", env)
        peer = llama_server(server_bin, paths[name], args.threads, work)
        aiml.start(timeout_s=120)
        peer.start(timeout_s=120)
        try:
            urls = {"aiml": base(aiml), "llama-server": base(peer)}
            results = asyncio.run(compare(urls, name, levels, args))
        finally:
            aiml.stop()
            peer.stop()
        report(MODELS[name], results, levels)


async def compare(
    urls: dict[str, str], model: str, levels: list[int], args: argparse.Namespace
) -> dict[tuple[str, int], list[Run]]:
    results: dict[tuple[str, int], list[Run]] = {}
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=64)) as http:
        for url in urls.values():  # warm up: load the model, fill caches
            await load(http, url, model, 1, 8)
        for concurrency in levels:
            for _ in range(args.rounds):
                for side, url in urls.items():
                    run = await load(http, url, model, concurrency, args.tokens)
                    results.setdefault((side, concurrency), []).append(run)
    return results


async def load(http: httpx.AsyncClient, url: str, model: str, concurrency: int, tokens: int) -> Run:
    """``concurrency`` clients, two requests each, all streaming ``tokens`` new tokens."""
    run = Run()
    counter = iter(range(1_000_000))

    async def client() -> None:
        for _ in range(2):
            n = next(counter)
            prompt = f"Story {n}: " + " ".join(WORDS[(n + i) % len(WORDS)] for i in range(24))
            body = {
                "model": model, "prompt": prompt, "max_tokens": tokens, "temperature": 0.8,
                "stream": True, "ignore_eos": True, "seed": n,
            }  # fmt: skip
            sent = time.perf_counter()
            last = None
            count = 0
            async with http.stream("POST", f"{url}/v1/completions", json=body) as response:
                response.raise_for_status()
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if not chunk.get("choices") or not chunk["choices"][0].get("text"):
                        continue
                    now = time.perf_counter()
                    if last is None:
                        run.ttft.append(now - sent)
                    else:
                        run.itl.append(now - last)
                    last = now
                    count += 1
            run.tokens += count

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    run.seconds = time.perf_counter() - started
    return run


def report(label: str, results: dict[tuple[str, int], list[Run]], levels: list[int]) -> None:
    print(f"\n{label}: aggregate tok/s (median of rounds), TTFT p50/p95 ms, ITL p50 ms")
    print(f"{'c':>3} | {'aiml tok/s':>10} {'ttft p50':>8} {'p95':>7} {'itl':>6} | "
          f"{'server tok/s':>12} {'ttft p50':>8} {'p95':>7} {'itl':>6} | {'ratio':>5}")  # fmt: skip
    for c in levels:
        cells = []
        rates = []
        for side in ("aiml", "llama-server"):
            runs = results[(side, c)]
            rate = statistics.median(r.rate for r in runs)
            ttft = sorted(t for r in runs for t in r.ttft)
            itl = sorted(t for r in runs for t in r.itl)
            rates.append(rate)
            cells.append(
                f"{rate:>10.1f} {pct(ttft, 50):>8.0f} {pct(ttft, 95):>7.0f} {pct(itl, 50):>6.1f}"
            )
        print(f"{c:>3} | {cells[0]} | {cells[1]:>12} | {rates[0] / rates[1]:>5.2f}")
    one = statistics.median(r.rate for r in results[("aiml", levels[0])])
    for c in levels[1:]:
        many = statistics.median(r.rate for r in results[("aiml", c)])
        print(f"    aiml c={c} / c={levels[0]}: {many / one:.2f}x")


def pct(values: list[float], p: int) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(len(values) * p / 100))] * 1000


def base(server: Process) -> str:
    return server.health_url.removesuffix("/health/live").removesuffix("/health")


def register(work: Path, env: dict[str, str], name: str, path: Path) -> None:
    full_env = {**os.environ, **env, "AIML_HOME": str(work / "aiml" / "home")}
    command = [sys.executable, "-m", "aiml", "register", str(path), name]
    subprocess.run([*command, "--task", "text-generation"], env=full_env, check=True)


def llama_server(binary: Path, gguf: Path, threads: int, work: Path) -> Process:
    port = free_port()
    argv = [
        str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
        "-np", "8", "-c", str(512 * 8), "-t", str(threads), "-tb", str(threads),
        "--no-webui",
    ]  # fmt: skip
    return Process(
        argv, env=dict(os.environ), log=work / "llama-server.log",
        health_url=f"http://127.0.0.1:{port}/health",
    )  # fmt: skip


def build_llama_server() -> Path:
    """llama-server from the llama.cpp sources in the installed llama-cpp-python's sdist."""
    version = importlib.metadata.version("llama-cpp-python")
    home = Path.home() / ".cache" / "aiml" / f"llama-server-{version}"
    binary = home / "build" / "bin" / "llama-server"
    if binary.exists():
        return binary
    home.mkdir(parents=True, exist_ok=True)
    print(f"building llama-server from llama-cpp-python {version}'s sources (once)...")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
         f"llama-cpp-python=={version}", "-d", str(home)],
        check=True,
    )  # fmt: skip
    sdist = next(home.glob("llama_cpp_python-*.tar.gz"))
    shutil.unpack_archive(sdist, home)
    source = home / sdist.name.removesuffix(".tar.gz") / "vendor" / "llama.cpp"
    flags = os.environ.get(
        "CMAKE_ARGS",  # the same portable CPU flags scripts/_venv.sh builds aiml's wheel with
        "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON "
        "-DGGML_BMI2=ON",
    ).split()
    subprocess.run(
        ["cmake", "-S", str(source), "-B", str(home / "build"), "-DCMAKE_BUILD_TYPE=Release",
         "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
         "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON", *flags],
        check=True,
    )  # fmt: skip
    subprocess.run(
        ["cmake", "--build", str(home / "build"), "--target", "llama-server",
         "-j", str(len(os.sched_getaffinity(0)))],
        check=True,
    )  # fmt: skip
    return binary


if __name__ == "__main__":
    main()
