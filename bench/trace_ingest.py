"""How many traces a second a ``TraceExporter`` gets into MLflow, and what limits it.

Phases of ``bench.traces`` (it starts the servers): ``export``: a burst of traces per
exporter configuration (``--configs``: batch x posting threads) into each destination (the
null sink, MLflow on sqlite, on PostgreSQL, and on PostgreSQL with ``--pg-workers``
server processes), every pair once a round, the order rotating, medians over the rounds;
``paced``: ``--rate`` a second offered for ``--seconds`` with ``--batch``/``--posters``;
``store``: MLflow's own ``SqlAlchemyStore.log_spans`` in this process on the same kinds of
database, with the spans already parsed: what one MLflow server process can store a second
with nothing else in the way (no HTTP, no exporter), the ceiling of a post.
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from argparse import Namespace
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities.span import Span
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from aiml.observability.trace_export import Destination, TraceExporter, encode
from aiml.observability.tracing import RequestTrace
from aiml.registry.trace_links import TraceLinks
from tests.fakes.processes import Process

Sinks = dict[str, tuple[str, dict[str, str]]]  # name -> (OTLP traces URL, headers)
Synthetic = Callable[[int], list[RequestTrace]]


def configs(text: str) -> list[tuple[int, int, bool]]:
    """``256x1,1024x2,256x2L``: (batch, posting threads, linked) triples; ``L``: every trace
    of a version with a logged model, so each gets MLflow's link too (trace_links.py)."""
    found = []
    for item in text.split(","):
        batch, _, posters = item.partition("x")
        found.append((int(batch), int(posters.removesuffix("L")), posters.endswith("L")))
    return found


def label(config: tuple[int, int, bool]) -> str:
    batch, posters, linked = config
    return f"{batch}x{posters}{'L' if linked else ''}"


def export(
    sinks: Sinks,
    servers: dict[str, Process],
    args: Namespace,
    synthetic: Synthetic,
    resource: dict[str, str],
    settled: Callable[[], None],
    database_cpu: Callable[[], float],
) -> None:
    pairs = [(name, config) for name in sinks for config in configs(args.configs)]
    print(f"\nexport: a TraceExporter alone, a burst of {args.burst} traces (the sink: x5) per "
          f"destination and batch x posters, {args.export_rounds} rounds, the order rotating; "
          "traces/s taken, the CPU ms a trace of MLflow's server (all its processes) and of "
          "PostgreSQL")  # fmt: skip
    rates: dict[tuple[str, tuple[int, int, bool]], list[float]] = {pair: [] for pair in pairs}
    cpus: dict[tuple[str, tuple[int, int, bool]], list[float]] = {pair: [] for pair in pairs}
    for round_ in range(args.export_rounds):
        shift = round_ * len(pairs) // max(1, args.export_rounds)
        for name, (batch, posters, linked) in pairs[shift:] + pairs[:shift]:
            settled()
            url, headers = sinks[name]
            server = servers.get(name)
            if server is not None:  # each burst in an experiment of its own, counted there
                mlflow = MlflowClient(tracking_uri=url.removesuffix("/v1/traces"))
                experiment = mlflow.create_experiment(
                    f"{name}-{label((batch, posters, linked))}-{round_}"
                )
                headers = {"x-mlflow-experiment-id": experiment}
            links, made = None, synthetic
            if linked and server is not None:
                links, made = _linked(url, mlflow, experiment, synthetic)
            destination = Destination(name, url, lambda h=headers: h, then=links)  # type: ignore[misc]
            count = args.burst * 5 if server is None else args.burst
            cpu_at = database_cpu()
            took = burst(destination, count, batch, posters, server, made, resource)
            took["db_ms"] = (database_cpu() - cpu_at) / count * 1e3
            line = (f"{took['rate']:6.0f} traces/s, {took['seconds']:5.1f} s, server CPU "
                    f"{took['server_ms']:.2f} ms a trace, PostgreSQL {took['db_ms']:.2f} ms, "
                    f"machine {took['machine_ms']:.2f} ms; "
                    f"dropped+failed {took['lost']:.0f}")  # fmt: skip
            if server is not None:
                line += f"; {stored(url, experiment)} of {count + 10} in MLflow"
            config = (batch, posters, linked)
            rates[(name, config)].append(took["rate"])
            cpus[(name, config)].append(took["server_ms"] + took["db_ms"])
            print(f"  round {round_ + 1} {name:<12} {label(config):>7}: {line}", flush=True)
    print(
        f"medians of {args.export_rounds} rounds (traces/s; CPU ms a trace, MLflow's "
        "server and PostgreSQL's):"
    )
    for name in sinks:
        cells = [f"{label(c)} {statistics.median(rates[(name, c)]):5.0f}/s "
                 f"{statistics.median(cpus[(name, c)]):5.2f}ms"
                 for c in configs(args.configs)]  # fmt: skip
        print(f"  {name:<12} " + "  ".join(cells))


def _linked(
    url: str, mlflow: MlflowClient, experiment: str, synthetic: Synthetic
) -> tuple[TraceLinks, Synthetic]:
    """MLflow's link follow-up, and traces of a version with a logged model (a real one)."""
    model = mlflow.create_logged_model(experiment, name="bench").model_id

    def made(count: int) -> list[RequestTrace]:
        traces = synthetic(count)
        for trace in traces:
            trace.logged_model = model
        return traces

    return TraceLinks(url.removesuffix("/v1/traces"), lambda: experiment), made


def burst(
    destination: Destination,
    count: int,
    batch: int,
    posters: int,
    server: Process | None,
    synthetic: Synthetic,
    resource: dict[str, str],
) -> dict[str, float]:
    exporter = TraceExporter(
        [destination], resource=resource, capacity=count + 100, batch=batch, posters=posters
    )
    for trace in synthetic(10):  # the connection up (and MLflow's first write done)
        exporter.submit(trace)
    exporter.flush(60)
    traces, before = synthetic(count), exporter.exported[destination.name]
    cpu, server_cpu = machine_cpu(), group_cpu(server) if server else 0.0
    started_at = time.perf_counter()
    for trace in traces:
        exporter.submit(trace)
    exporter.flush(600)
    elapsed = time.perf_counter() - started_at
    taken = exporter.exported[destination.name] - before
    cpu, server_cpu = machine_cpu() - cpu, (group_cpu(server) - server_cpu if server else 0)
    exporter.close()
    return {"rate": taken / elapsed, "seconds": elapsed, "machine_ms": cpu / count * 1e3,
            "server_ms": server_cpu / count * 1e3,
            "lost": exporter.dropped + exporter.failed[destination.name]}  # fmt: skip


def stored(url: str, experiment: str) -> int:
    """How many traces an experiment holds (MLflow's search, all its pages)."""
    import mlflow

    mlflow.set_tracking_uri(url.removesuffix("/v1/traces"))
    found = mlflow.search_traces(locations=[experiment], return_type="list", include_spans=False)
    return len(found)


def paced(destination: Destination, args: Namespace, synthetic: Synthetic, res: Any) -> str:
    """``--rate`` traces a second offered for ``--seconds``, queue 10,000 (the default)."""
    exporter = TraceExporter([destination], resource=res, batch=args.batch, posters=args.posters)
    traces = synthetic(int(args.rate * args.seconds) + 1)
    exporter.submit(traces.pop())
    exporter.flush(60)
    offered, started_at = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started_at) < args.seconds:
        due = min(int(elapsed * args.rate), len(traces))
        for trace in traces[offered:due]:
            exporter.submit(trace)
        offered = max(offered, due)
        time.sleep(0.005)
    taken = exporter.exported[destination.name] - 1
    with exporter._idle:  # what is left is not the window's: not posted after it
        left = len(exporter._queue)
        exporter._queue.clear()
    exporter.close(60)
    return (f"offered {offered / args.seconds:.0f}/s, taken {taken / args.seconds:.0f}/s "
            f"during the window, dropped {exporter.dropped} ({exporter.dropped / offered:.0%}),"
            f" failed {exporter.failed[destination.name]}, left queued {left}")  # fmt: skip


def store(
    databases: dict[str, str], args: Namespace, synthetic: Synthetic, resource: dict[str, str]
) -> None:
    """MLflow's store alone, in this process: parsed spans into ``log_spans``, batch by
    batch, interleaved across databases and batch sizes."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    batches = sorted({b for b, _, _ in configs(args.configs)})
    print(f"\nstore: MLflow's SqlAlchemyStore.log_spans in this process, {args.burst} traces "
          f"per database and batch, {args.export_rounds} rounds; parsing (protobuf, "
          "Span.from_otel_proto) timed apart, as the server does it before the store")  # fmt: skip
    stores = {n: SqlAlchemyStore(uri, tempfile.mkdtemp()) for n, uri in databases.items()}  # type: ignore[no-untyped-call]
    rates: dict[tuple[str, int], list[float]] = {(n, b): [] for n in stores for b in batches}
    cpus: dict[tuple[str, int], list[float]] = {pair: [] for pair in rates}
    parse: list[float] = []
    for round_ in range(args.export_rounds):
        for name, batch in list(rates)[round_ % len(rates) :] + list(rates)[: round_ % len(rates)]:
            experiment = stores[name].create_experiment(f"s-{name}-{batch}-{round_}")  # type: ignore[no-untyped-call]
            stores[name].log_spans(experiment, parsed(synthetic(4), resource)[0])
            spent, cpu, done = 0.0, 0.0, 0
            while done < args.burst:
                spans, parsing = parsed(synthetic(batch), resource)
                started_at, cpu_at = time.perf_counter(), time.process_time()
                stores[name].log_spans(experiment, spans)
                spent += time.perf_counter() - started_at
                cpu += time.process_time() - cpu_at
                parse.append(parsing / batch)
                done += batch
            rates[(name, batch)].append(done / spent)
            cpus[(name, batch)].append(cpu / done)
            print(f"  round {round_ + 1} {name:<9} batch {batch:5}: {done / spent:5.0f} "
                  f"traces/s ({spent / done * 1e3:.2f} ms a trace, {cpu / done * 1e3:.2f} ms of "
                  "it this process's CPU)", flush=True)  # fmt: skip
    print(
        f"medians (traces/s stored by one process, and its CPU ms a trace (the database's "
        f"own not counted); parsing {statistics.median(parse) * 1e3:.2f} ms a trace more):"
    )
    for name in stores:
        print(f"  {name:<9} " + "  ".join(f"batch {b} {statistics.median(rates[(name, b)]):.0f}/s"
                                          f" {statistics.median(cpus[(name, b)]) * 1e3:.2f}ms"
                                          for b in batches))  # fmt: skip


def parsed(traces: list[RequestTrace], resource: dict[str, str]) -> tuple[list[Span], float]:
    """The spans as MLflow's OTLP endpoint makes them from our bytes, and the seconds it took."""
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource

    from aiml.observability.trace_export import _kv

    body = encode(traces, Resource(attributes=[_kv(k, v) for k, v in resource.items()]))
    data = body.SerializeToString()
    started_at = time.perf_counter()
    request = ExportTraceServiceRequest()
    request.ParseFromString(data)
    spans = [Span.from_otel_proto(span, resource=rs.resource) for rs in request.resource_spans
             for scope in rs.scope_spans for span in scope.spans]  # fmt: skip
    return spans, time.perf_counter() - started_at


def group_cpu(process: Process | None) -> float:
    """CPU seconds of a process group's live members (an MLflow server and its workers)."""
    from bench.gateway import _TICKS

    pgid, total = str(process.proc.pid if process and process.proc else -1), 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if fields[2] == pgid:
                total += int(fields[11]) + int(fields[12])
    return total / _TICKS


def tree_cpu(pid: int | None) -> float:
    """CPU seconds of a process and its children (PostgreSQL's postmaster and backends)."""
    from bench.gateway import _TICKS

    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if pid is not None and pid in (int(stat.parent.name), int(fields[1])):
                total += int(fields[11]) + int(fields[12])
    return total / _TICKS


def machine_cpu() -> float:
    """Busy CPU seconds of the whole machine, every core (/proc/stat)."""
    from bench.gateway import _TICKS

    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / _TICKS
