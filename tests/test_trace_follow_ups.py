"""A destination's follow-up (MLflow's link from a trace to its logged model) gets only the
traces it wants of a batch the destination took, counted under its own name, exported or
failed; one that fails changes nothing of the batch's own count. (Against a real MLflow:
tests/test_traces.py.)"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from aiml.observability.trace_export import Destination, TraceExporter
from aiml.observability.tracing import RequestTrace
from tests.fakes.servers import free_port
from tests.test_trace_export import Slow


@pytest.fixture
def sink() -> Iterator[Slow]:
    """An OTLP sink that answers at once."""
    server = Slow()
    server.release.set()
    yield server
    server.server.shutdown()


class Links:
    name = "links"

    def __init__(self, *, fails: bool = False) -> None:
        self.fails = fails
        self.sent: list[str] = []

    def wanted(self, trace: RequestTrace) -> bool:
        return trace.logged_model is not None

    def send(self, batch: list[RequestTrace]) -> None:
        if self.fails:
            raise ConnectionError("MLflow went away")
        self.sent += [trace.mlflow_id for trace in batch]


def _traces(linked: int, plain: int) -> list[RequestTrace]:
    traces = [RequestTrace("chat") for _ in range(linked + plain)]
    for trace in traces[:linked]:
        trace.logged_model = "m-0123"
    return traces


def _export(sink: Slow, links: Links, traces: list[RequestTrace]) -> TraceExporter:
    exporter = TraceExporter(
        [Destination("mlflow", sink.url, dict, then=links)], resource={}, every_s=0.05
    )
    for trace in traces:
        exporter.submit(trace)
    assert exporter.flush()
    exporter.close()
    return exporter


def test_only_the_traces_it_wants_are_followed_up(sink: Slow) -> None:
    links = Links()
    traces = _traces(linked=3, plain=2)
    exporter = _export(sink, links, traces)
    assert links.sent == [t.mlflow_id for t in traces[:3]]
    assert exporter.exported == {"mlflow": 5, "links": 3}
    assert not exporter.failed


def test_a_failed_follow_up_is_counted_as_its_own(sink: Slow) -> None:
    exporter = _export(sink, Links(fails=True), _traces(linked=2, plain=1))
    assert exporter.exported == {"mlflow": 3}
    assert exporter.failed == {"links": 2}


def test_a_batch_the_destination_did_not_take_is_not_followed_up() -> None:
    """A link made for a trace whose spans never arrived would leave MLflow a trace that
    reads as having its spans elsewhere."""
    links = Links()
    refused = f"http://127.0.0.1:{free_port()}/v1/traces"  # nothing listens there
    exporter = TraceExporter(
        [Destination("mlflow", refused, dict, then=links)], resource={}, every_s=0.05
    )
    for trace in _traces(linked=2, plain=0):
        exporter.submit(trace)
    assert exporter.flush()
    exporter.close()
    assert links.sent == []
    assert exporter.failed == {"mlflow": 2}
