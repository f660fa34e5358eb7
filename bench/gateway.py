"""What a gateway costs: aiml against the same Ollama-API backend called directly, LiteLLM's
proxy, a bare FastAPI route (the ceiling) and a pooled httpx forwarder (the floor).

Every path serves the same non-streaming chat request on the same machine in the same run,
one uvicorn worker each (uvloop, httptools). Load comes from ``wrk -t1`` (a C client that
leaves the cores to the servers); each configuration runs ``--rounds`` times, interleaved,
and medians are reported. Server CPU per request is read from /proc for the server process
alone (not the backend, not wrk).

Then the view of a user's program: the official ``ollama`` and ``openai`` clients at c=1,
``--client-calls`` calls per path and round, taken in turn call by call, each path compared
with the same client calling the backend directly (so only the server path differs).

    .venv/bin/python -m bench.gateway --rounds 3 --seconds 8
    (LiteLLM: a separate venv with litellm[proxy]==1.108.7; --litellm PATH/TO/bin/litellm)

An A/B of two versions of aiml, side by side in one run: ``--also NAME=DIR`` serves a second
aiml from the source tree DIR (e.g. ``git archive COMMIT | tar -x -C DIR``), its paths named
``NAME /api/chat``, ``NAME /v1``, ``NAME /v1 openai`` (through the openai engine) and
``NAME /inference``.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.fakes.processes import Process
from tests.fakes.servers import free_port

MESSAGES = [{"role": "user", "content": "Hello"}]
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Target:
    name: str
    process: Process
    path: str
    body: dict[str, object]
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        base = self.process.health_url.split("/", 3)
        return f"{base[0]}//{base[2]}{self.path}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument(
        "--litellm", default=str(Path.home() / ".cache/aiml/litellm-venv/bin/litellm")
    )
    parser.add_argument("--only", default="", help="comma-separated target names")
    parser.add_argument(
        "--client-calls", type=int, default=1000, help="official-client calls per path and round"
    )
    parser.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="also serve aiml from the source tree DIR, its paths prefixed NAME (A/B runs)",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("this benchmark drives load with wrk: apt-get install wrk")
    work = Path(tempfile.mkdtemp(prefix="aiml-bench-gw-"))
    stub = _uvicorn("bench.peers.stub:app", work / "stub")
    stub.start()
    backend = stub.health_url.removesuffix("/api/version")
    targets = _targets(work, backend, args)
    if args.only:
        targets = [t for t in targets if t.name in args.only.split(",")]
    servers = list({id(t.process): t.process for t in targets}.values())
    try:
        for server in servers:
            server.start(timeout_s=120)
        results = _measure(
            [
                Target(
                    "direct",
                    stub,
                    "/api/chat",
                    {"model": "llama2:7b", "messages": MESSAGES, "stream": False},
                ),
                *targets,
            ],
            args,
        )
        clients = _official_clients(backend, targets, args) if args.client_calls else {}
    finally:
        for server in servers:
            server.stop()
        stub.stop()
    if results:
        _report(results, args)
    if clients:
        _report_clients(clients, args)


def _uvicorn(
    app: str, folder: Path, env: dict[str, str] | None = None, health: str = "/api/version"
) -> Process:
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    return Process(
        argv,
        env={**os.environ, **(env or {})},
        log=folder / "log",
        health_url=f"http://127.0.0.1:{port}{health}",
    )


def _targets(work: Path, backend: str, args: argparse.Namespace) -> list[Target]:
    chat = {"model": "llama2:7b", "messages": MESSAGES, "stream": False}
    targets = [
        Target(
            "echo",
            _uvicorn("bench.peers.echo:app", work / "echo", health="/docs"),
            "/api/chat",
            chat,
        ),
        Target(
            "forwarder",
            _uvicorn("bench.peers.forwarder:app", work / "fwd", {"BACKEND_URL": backend}, "/docs"),
            "/api/chat",
            chat,
        ),
    ]
    aiml_env = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'registry.db'}",
        "OLLAMA_HOST": backend,
        "AIML_ENGINES": "ollama,openai",
        "AIML_OPENAI_BASE_URL": f"{backend}/v1",
        "AIML_HOME": str(work / "aiml-home"),
    }
    subprocess.run(
        [
            sys.executable,
            "-m",
            "aiml",
            "register-ollama",
            "llama2:7b",
            "llama2-7b-chat",
            "--alias",
            "production",
        ],
        env={**os.environ, **aiml_env},
        check=True,
        capture_output=True,
    )
    targets += _aiml_targets("aiml", work / "aiml.log", aiml_env)
    for also in args.also:
        name, _, source = also.partition("=")
        env = {**aiml_env, "PYTHONPATH": str(Path(source).resolve() / "src")}
        targets += _aiml_targets(name, work / f"aiml-{name}.log", env)
    if Path(args.litellm).exists():
        litellm = _litellm(args.litellm, work, backend)
        targets.append(
            Target(
                "litellm",
                litellm,
                "/chat/completions",
                {"model": "llama2-7b-chat", "messages": MESSAGES},
                {"Authorization": "Bearer sk-bench"},
            )
        )
    return targets


def _litellm(
    binary: str, work: Path, backend: str, env: dict[str, str] | None = None, name: str = "litellm"
) -> Process:
    """LiteLLM's proxy (one worker) serving ``llama2-7b-chat`` from the stub, master key
    ``sk-bench``; ``env``: more of its environment (``DATABASE_URL`` for virtual keys)."""
    config = work / f"{name}.yaml"
    config.write_text(
        "model_list:\n  - model_name: llama2-7b-chat\n    litellm_params:\n"
        f"      model: ollama_chat/llama2:7b\n      api_base: {backend}\n"
    )
    port = free_port()
    return Process(
        [
            binary,
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            "1",
        ],
        env={**os.environ, "LITELLM_MASTER_KEY": "sk-bench", "LITELLM_LOG": "ERROR", **(env or {})},
        log=work / f"{name}.log",
        health_url=f"http://127.0.0.1:{port}/health/liveliness",
    )


def _aiml_targets(name: str, log: Path, env: dict[str, str]) -> list[Target]:
    """One aiml server (from the source tree on env's PYTHONPATH, if any) and its paths."""
    port = free_port()
    aiml = Process(
        [sys.executable, "-m", "aiml", "serve", "--port", str(port)],
        env={**os.environ, **env},
        log=log,
        health_url=f"http://127.0.0.1:{port}/health/live",
    )
    registered = {"model": "llama2-7b-chat@production", "messages": MESSAGES, "stream": False}
    return [
        Target(
            f"{name} /api/chat",
            aiml,
            "/api/chat",
            {**registered, "model": "llama2-7b-chat:production"},
        ),
        Target(f"{name} /v1", aiml, "/v1/chat/completions", registered),
        # The same surface through the openai engine (the stub's own /v1).
        Target(
            f"{name} /v1 openai",
            aiml,
            "/v1/chat/completions",
            {**registered, "model": "openai/llama2:7b"},
        ),
        Target(
            f"{name} /inference",
            aiml,
            "/inference/infer",
            {
                "task": "chat",
                "engine": "ollama",
                "model_name": "llama2-7b-chat@production",
                "data": {"messages": MESSAGES},
            },
        ),
    ]


def _measure(
    targets: list[Target], args: argparse.Namespace
) -> dict[tuple[str, int], list[dict[str, float]]]:
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    levels = [int(c) for c in args.concurrency.split(",")]
    for round_ in range(args.rounds):
        for concurrency in levels:
            for target in targets:  # interleaved: every path sees the same noise
                run = _wrk(target, concurrency, args.seconds)
                results.setdefault((target.name, concurrency), []).append(run)
                print(
                    f"round {round_ + 1} c={concurrency:<3} {target.name:<18} "
                    f"p50 {run['p50_ms']:.3f} ms  p99 {run['p99_ms']:.3f} ms  "
                    f"{run['rps']:.0f} req/s  cpu {run['cpu_ms']:.3f} ms/req  "
                    f"errors {run['errors']:.0f}",
                    flush=True,
                )
    return results


def _wrk(target: Target, concurrency: int, seconds: int) -> dict[str, float]:
    headers = {"Content-Type": "application/json", **target.headers}
    script = (
        'wrk.method = "POST"\n'
        + "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in headers.items())
        + f"wrk.body = [[{json.dumps(target.body)}]]\n"
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
        lua.write(script)
    pid = target.process.proc.pid if target.process.proc else 0
    before = _cpu_seconds(pid)
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{concurrency}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            lua.name,
            target.url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    used = _cpu_seconds(pid) - before
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = 0
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors = int(match.group(1))
    return {
        "p50_ms": _latency(out, "50%"),
        "p90_ms": _latency(out, "90%"),
        "p99_ms": _latency(out, "99%"),
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "cpu_ms": used / max(requests, 1) * 1000,
        "errors": errors,
        "requests": requests,
    }


def _official_clients(
    backend: str, targets: list[Target], args: argparse.Namespace
) -> dict[tuple[str, str], list[float]]:
    """Per-call seconds through the official clients at c=1, keyed by (client, path)."""
    import ollama
    import openai

    def origin(name: str) -> str | None:
        target = next((t for t in targets if t.name == name), None)
        return target.url.removesuffix(target.path) if target else None

    calls: dict[tuple[str, str], Callable[[], object]] = {}
    direct = ollama.Client(host=backend)
    calls["ollama", "direct"] = lambda: direct.chat(model="llama2:7b", messages=MESSAGES)
    if url := origin("aiml /api/chat"):
        via_aiml = ollama.Client(host=url)
        calls["ollama", "aiml /api/chat"] = lambda: via_aiml.chat(
            model="llama2-7b-chat:production", messages=MESSAGES
        )
    oa_direct = openai.OpenAI(base_url=f"{backend}/v1", api_key="none", max_retries=0)
    calls["openai", "direct"] = lambda: oa_direct.chat.completions.create(
        model="llama2:7b",
        messages=MESSAGES,  # type: ignore[arg-type]
    )
    if url := origin("aiml /v1"):
        oa_aiml = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        calls["openai", "aiml /v1"] = lambda: oa_aiml.chat.completions.create(
            model="llama2-7b-chat@production",
            messages=MESSAGES,  # type: ignore[arg-type]
        )
    if url := origin("litellm"):
        oa_litellm = openai.OpenAI(base_url=url, api_key="sk-bench", max_retries=0)
        calls["openai", "litellm"] = lambda: oa_litellm.chat.completions.create(
            model="llama2-7b-chat",
            messages=MESSAGES,  # type: ignore[arg-type]
        )
    seconds: dict[tuple[str, str], list[float]] = {key: [] for key in calls}
    for call in calls.values():
        for _ in range(20):  # connections up, caches warm
            call()
    for round_ in range(max(args.rounds, 1)):
        # Call by call in turn: the machine's noise drifts over seconds, and each path
        # must see the same noise as its baseline.
        for _ in range(args.client_calls):
            for key, call in calls.items():
                started = time.perf_counter()
                call()
                seconds[key].append(time.perf_counter() - started)
        print(f"round {round_ + 1} of the official clients done", flush=True)
    return seconds


def _report_clients(seconds: dict[tuple[str, str], list[float]], args: argparse.Namespace) -> None:
    print(
        f"\nofficial clients at c=1, {args.client_calls} calls x {max(args.rounds, 1)} rounds "
        "per path; 'added' is p50 minus the same client's p50 calling the backend directly"
    )
    print(f"{'client':<7} {'path':<16} {'p50 ms':>8} {'p99 ms':>8} {'added p50':>10}")
    for (client, name), values in seconds.items():
        q = statistics.quantiles(values, n=100)
        base = statistics.quantiles(seconds[client, "direct"], n=100)[49]
        print(
            f"{client:<7} {name:<16} {q[49] * 1000:>8.3f} {q[98] * 1000:>8.3f} "
            f"{(q[49] - base) * 1000:>7.3f} ms"
        )


def _latency(out: str, label: str) -> float:
    match = re.search(rf"{re.escape(label)}\s+([\d.]+)(us|ms|s)", out)
    if match is None:
        return float("nan")
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children that have exited."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / _TICKS


def _report(
    results: dict[tuple[str, int], list[dict[str, float]]], args: argparse.Namespace
) -> None:
    levels = [int(c) for c in args.concurrency.split(",")]
    names = list(dict.fromkeys(name for name, _ in results))

    def med(name: str, c: int, key: str) -> float:
        return statistics.median(run[key] for run in results[(name, c)])

    direct = med("direct", levels[0], "p50_ms")
    print(
        f"\nmedians of {args.rounds} rounds, {args.seconds} s each, wrk -t1; "
        f"'added' is p50 minus the backend's own p50 at c={levels[0]}"
    )
    head = f"{'path':<18} {f'added p50 c={levels[0]}':>13}"
    for c in levels:
        head += f" | {'p50':>7} {'p99':>7} {'req/s':>7} {'cpu/req':>8} (c={c})"
    print(head)
    for name in names:
        row = f"{name:<18} {med(name, levels[0], 'p50_ms') - direct:>10.3f} ms"
        for c in levels:
            row += (
                f" | {med(name, c, 'p50_ms'):>7.3f} {med(name, c, 'p99_ms'):>7.3f} "
                f"{med(name, c, 'rps'):>7.0f} {med(name, c, 'cpu_ms'):>6.3f}ms"
            )
        print(row)


if __name__ == "__main__":
    main()
