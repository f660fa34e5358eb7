"""The trace exporter with a destination slow to answer: at shutdown, what is still queued
when ``close`` gives up is dropped and counted, the post in flight finishes on an HTTP
client still open, and nothing is posted after ``close``; with several posting threads,
full batches are posted at once and a partial one after them."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from aiml.observability.trace_export import Destination, TraceExporter
from aiml.observability.tracing import RequestTrace


class Slow:
    def __init__(self) -> None:
        self.release = threading.Event()
        self.arrived = threading.Event()
        self.posts = 0
        self.counted = threading.Condition()
        slow = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's name
                self.rfile.read(int(self.headers["content-length"]))
                with slow.counted:
                    slow.posts += 1
                    slow.counted.notify_all()
                slow.arrived.set()
                slow.release.wait(10)
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_posts(self, count: int) -> bool:
        """Whether ``count`` posts have arrived (the held ones included) within 10 s."""
        with self.counted:
            return self.counted.wait_for(lambda: self.posts >= count, timeout=10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"


@pytest.fixture
def slow() -> Iterator[Slow]:
    server = Slow()
    yield server
    server.release.set()
    server.server.shutdown()


def test_close_drops_what_is_queued_and_leaves_the_post_in_flight_its_client(slow: Slow) -> None:
    exporter = TraceExporter(
        [Destination("slow", slow.url, dict)], resource={"service.name": "t"}, batch=1
    )
    for _ in range(3):
        exporter.submit(RequestTrace("chat m"))
    exporter.flush(timeout_s=0)  # wake the thread
    assert slow.arrived.wait(10)  # the first batch is being posted, and held
    exporter.close(timeout_s=0.2)
    assert exporter.dropped == 2  # still queued when close gave up: dropped, counted
    slow.release.set()
    assert exporter.flush(timeout_s=10)  # the post in flight has ended
    assert exporter.exported["slow"] == 1  # the post in flight still had its client
    assert exporter.failed["slow"] == 0
    assert slow.posts == 1  # nothing posted after close


def test_posters_post_full_batches_at_once_and_a_partial_one_after(slow: Slow) -> None:
    exporter = TraceExporter(
        [Destination("slow", slow.url, dict)], resource={"service.name": "t"}, batch=2, posters=2
    )
    for _ in range(4):
        exporter.submit(RequestTrace("chat m"))
    assert slow.wait_posts(2)  # both full batches in flight together, held by the server
    exporter.submit(RequestTrace("chat m"))  # partial: waits for a free thread, not dropped
    slow.release.set()
    assert exporter.flush(timeout_s=10)
    assert exporter.exported["slow"] == 5 and exporter.failed["slow"] == 0
    assert slow.posts == 3
    exporter.close()
