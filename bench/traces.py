"""What tracing costs a request, and how many traces a second the exporter gets into MLflow.

``--phases``: ``micro``: a chat call's ``Accounting`` in this process, untraced and traced at
1.0 (``begin``, marks, ``served``, ``complete``, ``submit``), the exporter's thread asleep,
then busy encoding (the GIL shared); and the thread's encoding cost. ``latency``: ``aiml
serve`` fronts on one stub and one sqlite registry, differing only in tracing: ``off``,
``off2`` (0: the noise floor between two processes), ``sink`` (1.0, a null OTLP endpoint),
``sqlite``, ``postgres`` (1.0, into an ``mlflow server`` on each); sequential chats, one to
each front in turn. ``load``: ``wrk -t1 -c16`` on each front in turn, with what its
exporter did meanwhile (its /metrics). ``export``, ``paced``, ``store``: a ``TraceExporter``
alone into the sink and each MLflow (``--pg-workers``: also PostgreSQL behind that many
server processes), and MLflow's store alone (bench/trace_ingest.py). Each interleaved; as:

    .venv/bin/python -m bench.traces --phases micro  (then latency,load; then export,store)
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from argparse import Namespace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from mlflow import MlflowClient

from aiml.inference.accounting import Accounting
from aiml.inference.request_traces import begin, complete, served
from aiml.inference.tasks.chat import ChatInput
from aiml.observability.context import request_path, response_headers
from aiml.observability.metrics import Metrics
from aiml.observability.stats import Stats
from aiml.observability.trace_export import Destination, TraceExporter, encode
from aiml.observability.tracing import TRACE_HEADER, RequestTrace, Tracer
from aiml.types import ChatMessage as Msg
from aiml.types import Generation, ModelRef, RegistryVersion, ResolvedModel, SamplingParams
from aiml.types import Source as Src
from bench import trace_ingest
from bench.alias_move import base, quantile
from bench.gateway import Target, _uvicorn, _wrk
from bench.trace_ingest import Sinks, group_cpu
from tests.fakes.postgres import PostgresCluster, postgres_bin
from tests.fakes.processes import Process, aiml_serve, mlflow_server

MODEL, CHAT = "traced", [{"role": "user", "content": "hello there"}]
REF, STABLE = ModelRef(MODEL, alias="production"), RegistryVersion(MODEL, 1, {})
RESOLVED = ResolvedModel("ollama", "llama2:7b", Src.REGISTRY, MODEL, 1, "chat")
INPUT = ChatInput((Msg("user", "hello there"),), SamplingParams(max_tokens=64))
ANSWER = Generation("Hello! How can I help you today?", "stop", 8, 9)
RESOURCE = {"service.name": "aiml", "service.instance.id": "bench"}
BODY = b'{"model": "traced@production", "messages": [{"role": "user", "content": "hello there"}]}'
Fronts = dict[str, Process]
Clients = dict[str, httpx.Client]


async def sink(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The null OTLP endpoint (ASGI): 200 to anything, at once (the exporter's ceiling)."""
    while scope["type"] == "http" and (await receive()).get("more_body"):
        pass
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phases", default="micro,latency,load,export")
    numbers = {  # flag: (default, what it sets)
        "--blocks": (60, "micro: blocks per variant"), "--calls": (1000, "micro: a block's"),
        "--rounds": (4000, "latency: rounds of one call per front"), "--load-rounds": (3, ""),
        "--load-seconds": (8, ""), "--queue": (2000, "the fronts' AIML_TRACE_QUEUE"),
        "--burst": (2000, "export: traces a burst (the sink: x5)"), "--export-rounds": (2, ""),
        "--batch": (256, "paced: the exporter's batch"), "--posters": (1, "paced: threads"),
        "--seconds": (15, "paced"), "--rate": (1300, "paced: traces offered a second"),
        "--pg-workers": (0, "export: also PostgreSQL behind this many server processes"),
    }  # fmt: skip
    for flag, (default, what) in numbers.items():
        parser.add_argument(flag, type=int, default=default, help=what or None)
    parser.add_argument("--configs", default="256x1,256x2,1024x1,1024x2",
                        help="export: batch x posting threads, comma-separated")  # fmt: skip
    args = parser.parse_args()
    phases = set(args.phases.split(","))
    if "micro" in phases:
        micro(args)
    with contextlib.ExitStack() as stack:
        sinks, named, databases = start_sinks(stack, args) if phases - {"micro"} else ({}, {}, {})
        servers = list(named.values())
        fronts = start_fronts(stack, sinks, args) if phases & {"latency", "load"} else {}
        clients = {n: httpx.Client(base_url=base(f)) for n, f in fronts.items()}
        if "latency" in phases:
            latency(fronts, clients, servers, args)
        if "load" in phases:
            load(fronts, clients, servers, args)
        if "store" in phases:
            stores = {k: v for k, v in databases.items() if k != "postmaster"}
            trace_ingest.store(stores, args, synthetic, RESOURCE)
        if "export" in phases:
            pid = int(databases["postmaster"]) if "postmaster" in databases else None
            trace_ingest.export(sinks, named, args, synthetic, RESOURCE,
                                lambda: settled({}, servers),
                                lambda: trace_ingest.tree_cpu(pid))  # fmt: skip
        if "paced" in phases:
            for name, (url, headers) in sinks.items():
                settled({}, servers)
                destination = Destination(name, url, lambda h=headers: h)  # type: ignore[misc]
                line = trace_ingest.paced(destination, args, synthetic, RESOURCE)
                print(f"  paced {name:<12} {args.batch}x{args.posters}: {line}", flush=True)
    print(f"(machine: {os.cpu_count()} CPUs)")


def micro(args: Namespace) -> None:
    stats, metrics, tasks, engines = Stats(), Metrics(), {"chat"}, ("ollama",)
    asleep = TraceExporter((), resource=RESOURCE, capacity=10**9, batch=10**9, every_s=3600)
    busy = TraceExporter((), resource=RESOURCE, capacity=10**9)  # encodes, posts nowhere
    request_path.set("/v1/chat/completions")
    response_headers.set([])

    def call(tracer: Tracer | None) -> None:
        trace = begin(tracer, "chat", INPUT) if tracer is not None else None
        account = Accounting(stats, metrics, "chat", tasks=tasks, trace=trace, tracer=tracer)
        account.located("ollama", engines, "traced@production")
        account.resolved()
        account.served_by("traced/1")
        if trace is not None:
            served(trace, REF, RESOLVED, STABLE)
        account.finish(200, ANSWER)

    variants = {"untraced": None, "traced 1.0, thread asleep": Tracer(1.0, asleep.submit),
                "traced 1.0, thread encoding": Tracer(1.0, busy.submit)}  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in variants}
    means: dict[str, list[float]] = {name: [] for name in variants}
    clock = time.perf_counter
    for block in range(args.blocks):
        for name in list(variants)[block % 3 :] + list(variants)[: block % 3]:
            tracer, kept, started = variants[name], times[name], clock()
            for _ in range(args.calls):
                at = clock()
                call(tracer)
                kept.append(clock() - at)
            means[name].append((clock() - started) / args.calls)
            for exporter in (asleep, busy):  # what a block left is not the next one's
                with exporter._idle:
                    exporter._queue.clear()
    print(f"\nmicro: a call's Accounting, {args.blocks} blocks x {args.calls} calls per variant")
    p50, mean = statistics.median(times["untraced"]), statistics.median(means["untraced"])
    for name, values in times.items():
        m = statistics.median(means[name])
        print(f"  {name:<27} p50 {statistics.median(values) * 1e6:6.2f} us  p99 "
              f"{quantile(values, 0.99) * 1e6:7.2f} us  block mean {m * 1e6:6.2f} us  (p50 "
              f"{(statistics.median(values) - p50) * 1e6:+6.2f} us, mean "
              f"{(m - mean) * 1e6:+6.2f} us)")  # fmt: skip
    batch, resource = synthetic(256), asleep._resource
    per = timeit.timeit(lambda: encode(batch, resource).SerializeToString(), number=40) / 40
    size = len(encode(batch, resource).SerializeToString()) / len(batch)
    print(f"  exporter thread: encoding {per / len(batch) * 1e6:.1f} us a trace ({size:.0f} "
          f"bytes, 5 spans; batches of {len(batch)})")  # fmt: skip


def synthetic(count: int) -> list[RequestTrace]:
    """Traces filled as the gate fills a /v1 chat's (root + locate, queue, resolve, engine)."""
    tracer = Tracer(1.0, lambda _: None)
    request_path.set("/v1/chat/completions")
    made = []
    for _ in range(count):
        trace = begin(tracer, "chat", INPUT)
        assert trace is not None
        marks = {step: time.perf_counter() for step in ("locate", "queue", "resolve")}
        served(trace, REF, RESOLVED, STABLE)
        complete(trace, task="chat", engine="ollama", model="traced@production", status=200,
                 generation=ANSWER, marks=marks, first_token_s=None, end=time.perf_counter(),
                 keep=tracer.keep)  # fmt: skip
        made.append(trace)
    return made


def start_sinks(
    stack: contextlib.ExitStack, args: Namespace
) -> tuple[Sinks, dict[str, Process], dict[str, str]]:
    """The null sink and the MLflow servers (each with an experiment for aiml's traces),
    and databases of each kind for the store alone."""
    work = Path(tempfile.mkdtemp(prefix="aiml-bench-traces-"))
    null = started(stack, _uvicorn("bench.traces:sink", work / "sink", health="/health"))
    sinks: Sinks = {"sink": (null.health_url.removesuffix("/health") + "/v1/traces", {})}
    servers = {"sqlite": mlflow_server(work / "mlflow-sqlite")}
    databases = {"sqlite": f"sqlite:///{work / 'store.db'}"}
    if postgres_bin() is not None:  # its folder apart: the server runs as nobody under root
        cluster = PostgresCluster(Path(tempfile.mkdtemp(prefix="aiml-bench-pg-"))).start()
        stack.callback(cluster.stop)
        servers["postgres"] = mlflow_server(work / "pg", backend=cluster.create_database("m"))
        if args.pg_workers:
            name = f"postgres-w{args.pg_workers}"
            servers[name] = mlflow_server(work / name, backend=cluster.create_database("mw"))
            argv = servers[name].argv
            argv[argv.index("--workers") + 1] = str(args.pg_workers)
        databases["postgres"] = cluster.create_database("store")
        databases["postmaster"] = (cluster.data / "postmaster.pid").read_text().split()[0]
    for name, server in servers.items():
        url = started(stack, server, 120).health_url.removesuffix("/health")
        experiment = MlflowClient(tracking_uri=url).create_experiment("aiml-traces")
        sinks[name] = (f"{url}/v1/traces", {"x-mlflow-experiment-id": experiment})
    print(f"(work folder {work})")
    return sinks, servers, databases


def started(stack: contextlib.ExitStack, process: Process, timeout_s: float = 60) -> Process:
    process.start(timeout_s=timeout_s)
    stack.callback(process.stop)
    return process


def start_fronts(stack: contextlib.ExitStack, sinks: Sinks, args: Namespace) -> Fronts:
    """One front per tracing configuration, on one stub and one sqlite registry."""
    work = Path(tempfile.mkdtemp(prefix="aiml-bench-fronts-"))
    stub = started(stack, _uvicorn("bench.peers.stub:app", work / "stub"))
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{work / 'registry.db'}",
           "OLLAMA_HOST": stub.health_url.removesuffix("/api/version"),
           "AIML_RESOLVE_TTL_S": "300", "AIML_TRACE_QUEUE": str(args.queue)}  # fmt: skip
    register = ["register-ollama", "llama2:7b", MODEL, "--alias", "production"]
    cli_env = {**os.environ, **env, "AIML_HOME": str(work / "cli")}
    subprocess.run([sys.executable, "-m", "aiml", *register], env=cli_env, check=True)
    configs: dict[str, dict[str, str]] = {"off": {}, "off2": {}}
    for name, (url, headers) in sinks.items():
        configs[name] = {"AIML_TRACE_SAMPLE": "1.0", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": url,
                         "OTEL_EXPORTER_OTLP_HEADERS": ",".join(f"{k}={v}" for k, v in
                                                                headers.items())}  # fmt: skip
    return {name: started(stack, aiml_serve(work / name, {**env, **extra}), 120)
            for name, extra in configs.items()}  # fmt: skip


def exporter_counts(http: httpx.Client) -> dict[str, float]:
    """A front's aiml_traces_* (zero when it traces nothing)."""
    text = http.get("/metrics").text
    found = re.findall(r"^aiml_traces_(\w+?)(?:_total)?(?:{.*})? (\S+)$", text, re.M)
    return {key: sum(float(v) for k, v in found if k == key)
            for key in ("exported", "dropped", "failed", "queued")}  # fmt: skip


def settled(clients: Clients, servers: list[Process]) -> None:
    """Until no front has traces queued or in flight and the MLflow servers are idle."""
    deadline, last, idle = time.monotonic() + 180, None, 0.0
    while time.monotonic() < deadline:
        cpu = sum(group_cpu(s) for s in servers)
        now = [exporter_counts(c) for c in clients.values()]
        if now == last and not any(n["queued"] for n in now) and cpu - idle < 0.1:
            return
        last, idle = now, cpu
        time.sleep(1)
    print("  (not settled after 180 s; going on)")


def latency(fronts: Fronts, clients: Clients, servers: list[Process], args: Namespace) -> None:
    def connect(front: Process) -> http.client.HTTPConnection:
        where = urlsplit(front.health_url)
        return http.client.HTTPConnection(where.hostname or "", where.port, timeout=30)

    conns, names = {n: connect(f) for n, f in fronts.items()}, list(fronts)
    clock = time.perf_counter
    traced, headers = dict.fromkeys(names, 0), {"content-type": "application/json"}
    times: dict[str, list[float]] = {n: [] for n in names}

    def chat(name: str) -> float:
        at = clock()
        conns[name].request("POST", "/v1/chat/completions", BODY, headers)
        answer = conns[name].getresponse()
        answer.read()
        took = clock() - at
        assert answer.status == 200, answer.status
        traced[name] += answer.getheader(TRACE_HEADER) is not None
        return took

    for name in names * 200:  # connections up, the alias resolved, caches warm
        chat(name)
    settled(clients, servers)
    before, started_at = {n: exporter_counts(c) for n, c in clients.items()}, clock()
    traced.update(dict.fromkeys(names, 0))
    for i in range(args.rounds):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            times[name].append(chat(name))
    rate = len(names) * args.rounds / (clock() - started_at)
    settled(clients, servers)
    print(f"\nlatency: {args.rounds} rounds of one sequential /v1 chat to each front (order "
          f"rotating), {rate:.0f} req/s in all; 'added' against off; slices: the added p50 "
          "over 10 interleaved tenths of the rounds")  # fmt: skip
    off, ms = times["off"], 1e3
    for name, values in times.items():
        did = {k: v - before[name][k] for k, v in exporter_counts(clients[name]).items()}
        slices = [statistics.median(values[j::10]) - statistics.median(off[j::10])
                  for j in range(10)]  # fmt: skip
        p50, p99 = statistics.median(values), quantile(values, 0.99)
        print(f"  {name:<8} p50 {p50 * ms:.3f} ms  p99 {p99 * ms:6.3f} ms  added p50 "
              f"{(p50 - statistics.median(off)) * ms:+.3f} ms (slices {min(slices) * ms:+.3f}.."
              f"{max(slices) * ms:+.3f})  p99 {(p99 - quantile(off, 0.99)) * ms:+.3f} ms  traced "
              f"{traced[name]}: exported {did['exported']:.0f} dropped {did['dropped']:.0f} "
              f"failed {did['failed']:.0f}")  # fmt: skip


def load(fronts: Fronts, clients: Clients, servers: list[Process], args: Namespace) -> None:
    runs: dict[str, list[dict[str, float]]] = {n: [] for n in fronts}
    body: dict[str, object] = {"model": f"{MODEL}@production", "messages": CHAT}
    print(f"\nload: wrk -t1 -c16 -d{args.load_seconds}s /v1/chat/completions, each front in "
          f"turn, AIML_TRACE_QUEUE={args.queue}; traces as counted during the run")  # fmt: skip
    for round_ in range(args.load_rounds):
        for name, front in fronts.items():
            settled(clients, servers)  # no backlog loads the machine during another's run
            before = exporter_counts(clients[name])
            run = _wrk(Target(name, front, "/v1/chat/completions", body), 16, args.load_seconds)
            run |= {k: v - before[k] for k, v in exporter_counts(clients[name]).items()}
            runs[name].append(run)
            print(f"  round {round_ + 1} {name:<8} {run['rps']:5.0f} req/s  p50 "
                  f"{run['p50_ms']:6.2f} ms  p99 {run['p99_ms']:6.2f} ms  cpu "
                  f"{run['cpu_ms']:.3f} ms/req  traces: exported "
                  f"{run['exported'] / args.load_seconds:4.0f}/s dropped {run['dropped']:5.0f} "
                  f"failed {run['failed']:.0f}  errors {run['errors']:.0f}")  # fmt: skip
    print(f"medians of {args.load_rounds} rounds:")
    off = statistics.median(r["rps"] for r in runs["off"])
    for name, values in runs.items():
        med = {k: statistics.median(r[k] for r in values) for k in values[0]}
        print(f"  {name:<8} {med['rps']:5.0f} req/s ({med['rps'] / off:.2f} of off)  p50 "
              f"{med['p50_ms']:6.2f} ms  cpu {med['cpu_ms']:.3f} ms/req  traces exported "
              f"{med['exported'] / args.load_seconds:.0f}/s, dropped "
              f"{med['dropped'] / (med['rps'] * args.load_seconds):.0%}")  # fmt: skip


if __name__ == "__main__":
    main()
