"""Schemas that used to crash or stall ``aiml serve`` (issue 17, findings 1, 4, 9, 10).

Against a real ``aiml serve`` child process with SmolLM2-135M (llama.cpp, chat):

* a 40,000-value enum as ``response_format``, while another user sends 8-token chats to
  the same model one after another: the enum request's time and status, the chats' worst
  and median latency;
* a 256-value enum (within the limits: its grammar is parsed and it filters the vocabulary
  off the scheduler's thread), the same way;
* a depth-16 nested schema (65k leaves, ~2.6 MB body), while /health/live is polled: the
  request's time and status, the worst and median /health/live latency, the process's RSS;
* the crashing requests (``maxLength``/``maxItems`` 20000, ``^a{0,20000}$``, 8,000 optional
  properties; in ``response_format`` and in a tool's parameters): status, or how the
  process died (run last).

    .venv/bin/python -m bench.grammar_attacks                              # this tree
    PYTHONPATH=/tmp/base/src .venv/bin/python -m bench.grammar_attacks     # another tree
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from aiml.bundled import BUNDLED
from tests.fakes.processes import Process, aiml_serve

CHAT = [{"role": "user", "content": "Say hello."}]


def tree(depth: int) -> dict[str, Any]:
    """A schema nested ``depth`` levels, two properties at each: 2**depth leaves."""
    if depth == 0:
        return {"type": "string"}
    return {"properties": {"a": tree(depth - 1), "b": tree(depth - 1)}}


def as_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


def enum_format(values: int) -> dict[str, Any]:
    return as_format({"enum": [f"value-{i}" for i in range(values)]})


def as_tool(schema: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"type": "function", "function": {"name": "f", "parameters": schema}}]


def serve(work: Path) -> Process:
    env = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'registry.db'}",
        "AIML_ENGINES": "llamacpp",
        "AIML_LLAMACPP_PARALLEL": "2",
        "AIML_LLAMACPP_N_CTX": "512",
        "AIML_LLAMACPP_THREADS": "1",
    }
    smol = next(m for m in BUNDLED if m.registered_name == "smollm2-135m-instruct").locate(work)
    full_env = {**os.environ, **env, "AIML_HOME": str(work / "aiml" / "home")}
    command = [sys.executable, "-m", "aiml", "register", str(smol), "smol", "--task", "chat"]
    subprocess.run(command, env=full_env, check=True, capture_output=True)
    process = aiml_serve(work / "aiml", env)
    process.start()
    return process


def rss_mib(process: Process) -> tuple[float, float]:
    """(VmRSS, VmHWM) of the server, in MiB."""
    assert process.proc is not None
    fields = dict(
        line.split(":", 1)
        for line in Path(f"/proc/{process.proc.pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def meanwhile(
    request: Callable[[], httpx.Response], probe: Callable[[], None], limit_s: float
) -> tuple[str, float, list[float]]:
    """Run ``request`` on a thread and ``probe`` over and over until it is answered (or
    ``limit_s`` passed): its outcome and seconds, and each probe's seconds."""
    outcome: list[str] = []
    started = time.perf_counter()

    def run() -> None:
        try:
            response = request()
            outcome.append(f"{response.status_code} {response.text[:120]}")
        except httpx.HTTPError as exc:
            outcome.append(f"{type(exc).__name__}")

    thread = threading.Thread(target=run)
    thread.start()
    probes = []
    while thread.is_alive() and time.perf_counter() - started < limit_s:
        begun = time.perf_counter()
        probe()
        probes.append(time.perf_counter() - begun)
    thread.join(limit_s)
    elapsed = time.perf_counter() - started
    return (outcome[0] if outcome else f"no answer in {limit_s:.0f} s"), elapsed, probes


def summary(times: list[float]) -> str:
    if not times:
        return "none ran"
    return (f"{len(times)} ran, worst {max(times) * 1000:.0f} ms, "
            f"p50 {statistics.median(times) * 1000:.0f} ms")  # fmt: skip


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="aiml-bench-grammar-attacks-"))
    process = serve(work)
    url = process.health_url.removesuffix("/health/live")
    client = httpx.Client(base_url=url, timeout=120)
    try:
        chat = {"model": "smol", "messages": CHAT, "max_tokens": 8, "temperature": 0}
        client.post("/v1/chat/completions", json=chat).raise_for_status()  # loads the model
        alone = []
        for _ in range(5):
            begun = time.perf_counter()
            client.post("/v1/chat/completions", json=chat).raise_for_status()
            alone.append(time.perf_counter() - begun)
        print(f"8-token chat alone: {summary(alone)}")

        other = httpx.Client(base_url=url, timeout=120)
        for label, values in (("40,000-value enum", 40_000),
                              ("256-value enum (the alternatives limit)", 256)):  # fmt: skip
            enum = {**chat, "max_tokens": 16, "response_format": enum_format(values)}
            before = rss_mib(process)
            outcome, seconds, probes = meanwhile(
                lambda: client.post("/v1/chat/completions", json=enum),  # noqa: B023
                lambda: other.post("/v1/chat/completions", json=chat).raise_for_status() and None,
                150,
            )
            after = rss_mib(process)
            print(f"{label}: {outcome[:60]!r} in {seconds:.2f} s; "
                  f"another user's 8-token chats meanwhile: {summary(probes)}; RSS "
                  f"{before[0]:.0f} -> {after[0]:.0f} MiB (peak {after[1]:.0f} MiB)")  # fmt: skip

        deep = {**chat, "response_format": as_format(tree(16))}
        body = json.dumps(deep).encode()
        before = rss_mib(process)
        outcome, seconds, probes = meanwhile(
            lambda: client.post(
                "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
            ),
            lambda: other.get("/health/live").raise_for_status() and None,
            60,
        )
        after = rss_mib(process)
        print(f"depth-16 schema ({len(body) / 1e6:.1f} MB body): {outcome!r} in {seconds:.2f} s; "
              f"/health/live meanwhile: {summary(probes)}; RSS {before[0]:.0f} -> "
              f"{after[0]:.0f} MiB (peak {after[1]:.0f} MiB)")  # fmt: skip

        crashing = {
            "maxLength 20000": {"type": "object", "required": ["s"],
                                "properties": {"s": {"type": "string", "maxLength": 20_000}}},
            "maxItems 20000": {"type": "array", "items": {"type": "integer"}, "maxItems": 20_000},
            "pattern ^a{0,20000}$": {"type": "string", "pattern": "^a{0,20000}$"},
            "8000 optional properties": {
                "type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(8000)}
            },
        }  # fmt: skip
        for name, schema in crashing.items():
            for where, extra in (
                ("response_format", {"response_format": as_format(schema)}),
                ("tools", {"tools": as_tool(schema), "tool_choice": "required"}),
            ):
                if process.proc is None or process.proc.poll() is not None:
                    print(f"{name} in {where}: not sent (the process is gone)")
                    continue
                try:
                    response = client.post(
                        "/v1/chat/completions", json={**chat, **extra}, timeout=60
                    )
                    print(f"{name} in {where}: {response.status_code} {response.text[:160]}")
                except httpx.HTTPError as exc:
                    code = process.proc.wait(10) if process.proc else None
                    died = signal.Signals(-code).name if code is not None and code < 0 else code
                    print(f"{name} in {where}: {type(exc).__name__}; the process exited ({died})")
    finally:
        process.stop()


if __name__ == "__main__":
    main()
