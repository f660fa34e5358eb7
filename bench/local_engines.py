"""Local engines through aiml's HTTP API against the libraries called directly.

1. Tokens per second: SmolLM2 (GGUF) generating through ``POST /inference/infer`` on a
   running ``aiml serve`` versus llama-cpp-python called in this process on the same file,
   same settings, same greedy prompt (so the same tokens), interleaved run by run.
2. Embeddings per second at concurrency 16: all-MiniLM-L6-v2 through aiml with dynamic
   batching versus the same server with batching off (``AIML_EMBED_MAX_BATCH=1``: one
   request per forward pass), interleaved; load from ``wrk`` (apt-get install wrk), whose
   C client leaves the cores to the server.

    .venv/bin/python -m bench.local_engines --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from aiml.bundled import BUNDLED
from tests.fakes.processes import Process, aiml_serve

PROMPT = "Once upon a time, in a small village by the sea, there lived"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved runs per side")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per generation")
    parser.add_argument("--seconds", type=int, default=10, help="length of an embeddings run")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("this benchmark drives load with wrk: apt-get install wrk")

    work = Path(tempfile.mkdtemp(prefix="aiml-bench-local-"))
    paths = {m.registered_name: m.locate(work) for m in BUNDLED}
    env = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'registry.db'}",
        "AIML_ENGINES": "llamacpp,transformers",
    }
    _register(work, env, paths)

    batched = aiml_serve(work / "batched", env)
    unbatched = aiml_serve(work / "unbatched", {**env, "AIML_EMBED_MAX_BATCH": "1"})
    batched.start()
    unbatched.start()
    try:
        gguf = paths["smollm2-135m-instruct"]
        tokens = _tokens_per_second(batched, gguf, args.rounds, args.tokens)
        embeds = _embeddings_per_second(batched, unbatched, args)
    finally:
        batched.stop()
        unbatched.stop()

    direct, via = tokens
    print(f"\n1. Generation, SmolLM2-135M Q4_1, {args.tokens} tokens, greedy, {args.rounds} runs")
    _row("llama-cpp-python direct", direct, "tok/s")
    _row("aiml HTTP API", via, "tok/s")
    print(f"   ratio aiml / direct     : {statistics.median(via) / statistics.median(direct):.3f}")
    one, many = embeds
    print(
        f"\n2. Embeddings, all-MiniLM-L6-v2, concurrency {args.concurrency}, "
        f"one sentence per request, {args.seconds} s runs with wrk"
    )
    _row("one request per pass", one, "embeddings/s")
    _row("dynamic batching", many, "embeddings/s")
    print(f"   ratio batched / single  : {statistics.median(many) / statistics.median(one):.2f}")


def _row(label: str, values: list[float], unit: str) -> None:
    runs = ", ".join(f"{v:.1f}" for v in values)
    print(f"   {label:<24}: median {statistics.median(values):7.1f} {unit}  (runs: {runs})")


def _register(work: Path, env: dict[str, str], paths: dict[str, Path]) -> None:
    full_env = {**os.environ, **env, "AIML_HOME": str(work / "home")}
    for name, path, task in (
        ("smollm2-135m-instruct", paths["smollm2-135m-instruct"], "text-generation"),
        ("all-minilm-l6-v2", paths["all-minilm-l6-v2"], "embeddings"),
    ):
        subprocess.run(
            [sys.executable, "-m", "aiml", "register", str(path), name, "--task", task],
            env=full_env,
            check=True,
            capture_output=True,
        )


def _tokens_per_second(
    server: Process, gguf: Path, rounds: int, tokens: int
) -> tuple[list[float], list[float]]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=2048, n_threads=os.cpu_count(), verbose=False)
    base = server.health_url.removesuffix("/health/live")
    body = {
        "task": "text-generation",
        "engine": "llamacpp",
        "model_name": "smollm2-135m-instruct",
        "data": {"inputs": PROMPT},
        "options": {"max_tokens": tokens, "temperature": 0},
    }
    direct: list[float] = []
    via: list[float] = []
    with httpx.Client(base_url=base, timeout=300) as http:
        http.post("/inference/infer", json=body).raise_for_status()  # load the model: not timed
        llm.create_completion(PROMPT, max_tokens=8, temperature=0)
        for _ in range(rounds):
            started = time.perf_counter()
            out = llm.create_completion(PROMPT, max_tokens=tokens, temperature=0)
            direct.append(out["usage"]["completion_tokens"] / (time.perf_counter() - started))
            started = time.perf_counter()
            response = http.post("/inference/infer", json=body)
            elapsed = time.perf_counter() - started
            response.raise_for_status()
            count = response.json()["result"]["metadata"]["completion_tokens"]
            if count != out["usage"]["completion_tokens"]:
                raise SystemExit(
                    f"token counts differ: aiml {count}, direct {out['usage']['completion_tokens']}"
                )
            via.append(count / elapsed)
    llm.close()
    return direct, via


def _embeddings_per_second(
    batched: Process, unbatched: Process, args: argparse.Namespace
) -> tuple[list[float], list[float]]:
    """wrk drives the load: a C client leaves the two cores to the server being measured."""
    single: list[float] = []
    many: list[float] = []
    for _ in range(max(1, args.rounds // 2 + 1)):
        single.append(_embed_run(unbatched, args.seconds, args.concurrency))
        many.append(_embed_run(batched, args.seconds, args.concurrency))
    return single, many


def _embed_run(server: Process, seconds: int, concurrency: int) -> float:
    base = server.health_url.removesuffix("/health/live")
    body = {
        "task": "embeddings",
        "engine": "transformers",
        "model_name": "all-minilm-l6-v2",
        "data": {"inputs": "a cat sat on the mat and looked at the kitten"},
    }
    httpx.post(f"{base}/inference/infer", json=body, timeout=300).raise_for_status()  # warm
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            'wrk.method = "POST"\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = [[{json.dumps(body)}]]\n"
        )
    command = [
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{seconds}s",
        "-s",
        script.name,
        f"{base}/inference/infer",
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in output:
        raise SystemExit(f"errors during the run:\n{output}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if match is None:
        raise SystemExit(f"cannot read wrk's output:\n{output}")
    return float(match.group(1))


if __name__ == "__main__":
    main()
