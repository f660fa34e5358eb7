"""Huge request headers without a key, in rounds of concurrent connections: the server's
memory after each round and after an idle wait, and another client's liveness latency.

    .venv/bin/python -m bench.header_flood --rounds 4 --connections 20 --header-mib 32

aiml runs as ``aiml serve`` (a process of its own, embedded registry, API keys on). Each
round opens ``--connections`` connections at once, each sending ``GET /v1/models`` with one
``--header-mib`` MiB header and no ``Authorization``, as fast as the server takes it, until
the server answers or closes. Meanwhile a prober opens a fresh connection for ``GET
/health/live`` every 50 ms; its worst latency is reported, and the server's peak RSS in
each round (sampled every 10 ms). ``AIML_HEADER_TIMEOUT_S`` is
60 s (``--header-timeout-s``) so that on a slow machine the header deadline does not end a
connection before its header is all sent. To measure the code before a
change, put it first on the path: ``PYTHONPATH=/old/src .venv/bin/python -m bench...``.

    .venv/bin/python -m bench.header_flood --chunk-cost

instead measures, in this process and without a server, the CPU seconds per MiB of a
chunked body that httptools alone takes and that the framing plus httptools take (the
guard's share of the event loop), for chunks of 1, 16, 64 and 4096 bytes fed 64 KiB at a
time; with 1-byte chunks the framing refuses the body after ``TINY_CHUNKS`` chunks, so its
row says what a refused body cost.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import socket
import tempfile
import threading
import time
from pathlib import Path

from tests.fakes.processes import Process, aiml_serve
from tests.fakes.servers import free_port

PIECE = 256 << 10
PROBE_EVERY_S = 0.05


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk-cost", action="store_true", help="see the module's doc")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--header-mib", type=int, default=32)
    parser.add_argument("--idle-s", type=float, default=15.0)
    parser.add_argument(
        "--header-timeout-s",
        type=float,
        default=60.0,
        help="AIML_HEADER_TIMEOUT_S: long, so that a slow machine measures memory, not it",
    )
    args = parser.parse_args()
    if args.chunk_cost:
        print(json.dumps(_chunk_cost(), indent=2))
        return
    port = free_port()
    env = {
        "AIML_API_KEYS": "bench-key",
        "AIML_ENGINES": "ollama",
        "OLLAMA_HOST": "http://127.0.0.1:9",
        "AIML_HEADER_TIMEOUT_S": str(args.header_timeout_s),
    }
    aiml = aiml_serve(Path(tempfile.mkdtemp(prefix="aiml-flood-")), env, port)
    aiml.start()
    probe = _Prober(port, aiml)
    report: dict[str, object] = {"rss_start_mib": _rss_mib(aiml)}
    try:
        probe.start()
        rounds = []
        for number in range(args.rounds):
            began = time.monotonic()
            probe.peak_rss_mib = 0.0
            statuses = asyncio.run(_round(port, args.connections, args.header_mib << 20))
            rounds.append(
                {
                    "round": number + 1,
                    "seconds": round(time.monotonic() - began, 2),
                    "answers": dict(statuses),
                    "peak_rss_mib": probe.peak_rss_mib,
                    "rss_after_mib": _rss_mib(aiml),
                }
            )
            print(json.dumps(rounds[-1]), flush=True)
        probe.stop()
        time.sleep(args.idle_s)  # the condition measured: memory after this long idle
        report |= {
            "rounds": rounds,
            f"rss_after_{args.idle_s:.0f}s_idle_mib": _rss_mib(aiml),
            "probe": probe.summary(),
        }
    finally:
        try:
            probe.stop()
        finally:
            aiml.stop()
    print(json.dumps(report, indent=2))


async def _round(port: int, connections: int, size: int) -> collections.Counter[str]:
    answers = await asyncio.gather(*(_flood(port, size) for _ in range(connections)))
    return collections.Counter(answers)


async def _flood(port: int, size: int) -> str:
    """One connection's huge header; the status line's code, or how the connection ended."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    piece = b"a" * PIECE
    answer = asyncio.ensure_future(reader.readline())
    try:
        writer.write(b"GET /v1/models HTTP/1.1\r\nHost: aiml\r\nX-Filler: ")
        for _ in range(size // PIECE):
            if answer.done():
                break  # the server answered (or closed) before the header's end
            writer.write(piece)
            await writer.drain()
        else:
            writer.write(b"\r\n\r\n")
            await writer.drain()
    except ConnectionError:
        pass  # closed under our writes; its answer may still be read
    try:
        line = await asyncio.wait_for(answer, 60)
    except (ConnectionError, TimeoutError) as error:
        return type(error).__name__
    finally:
        writer.close()
    return line.split(b" ")[1].decode() if line.count(b" ") >= 1 else "closed"


def _chunk_cost() -> list[dict[str, object]]:
    import httptools

    from aiml.edge.http_framing import RequestFraming

    head = b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    rows: list[dict[str, object]] = []
    for size in (1, 16, 64, 4096):
        body = (b"%x\r\n%s\r\n" % (size, b"x" * size)) * ((1 << 20) // size)
        stream = head + body + b"0\r\n\r\n"
        pieces = [stream[at : at + (64 << 10)] for at in range(0, len(stream), 64 << 10)]
        row: dict[str, object] = {"chunk_bytes": size}
        for framed in (False, True):
            parser = httptools.HttpRequestParser(_NoCallbacks())
            framing = RequestFraming(max_head_bytes=65536, max_headers=100)
            began, passed = time.process_time(), 0
            for piece in pieces:
                allowed = framing.feed(piece) if framed else len(piece)
                parser.feed_data(piece[:allowed])
                passed += allowed
                if allowed < len(piece):
                    break  # refused: nothing more reaches the parser
            seconds = time.process_time() - began
            mib = passed / len(stream)  # of the MiB, what was read before any refusal
            name = "framing_and_httptools" if framed else "httptools"
            row[f"{name}_s"] = round(seconds, 4)
            row[f"{name}_mib_read"] = round(mib, 4)
            if framed:
                row["refused"] = getattr(framing, "refusal", "") or None  # none before it
        rows.append(row)
    return rows


class _NoCallbacks:
    def on_body(self, body: bytes) -> None:
        return None


class _Prober(threading.Thread):
    """``GET /health/live`` on a fresh connection every 50 ms; the latencies. Samples the
    server's RSS every 10 ms meanwhile (a peak lasts a moment)."""

    def __init__(self, port: int, server: Process) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.server = server
        self.peak_rss_mib = 0.0
        self.latencies: list[float] = []
        self.failures = 0
        self._done = threading.Event()

    def run(self) -> None:
        sampler = threading.Thread(target=self._sample, daemon=True)
        sampler.start()
        while not self._done.is_set():
            began = time.monotonic()
            if _live(self.port):
                self.latencies.append(time.monotonic() - began)
            else:
                self.failures += 1
            self._done.wait(PROBE_EVERY_S)

    def _sample(self) -> None:
        while not self._done.wait(0.01):
            try:
                self.peak_rss_mib = max(self.peak_rss_mib, _rss_mib(self.server))
            except (OSError, AssertionError):
                return  # the server is being stopped

    def stop(self) -> None:
        self._done.set()
        if self.is_alive():
            self.join(timeout=35)

    def summary(self) -> dict[str, object]:
        ordered = sorted(self.latencies)
        return {
            "probes": len(ordered),
            "failures": self.failures,
            "median_ms": round(ordered[len(ordered) // 2] * 1000, 1) if ordered else None,
            "worst_ms": round(ordered[-1] * 1000, 1) if ordered else None,
        }


def _live(port: int) -> bool:
    """One ``GET /health/live`` on a new connection (a raw socket: no client set-up timed)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: aiml\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
            return answer.startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def _rss_mib(process: Process) -> float:
    assert process.proc is not None
    status = Path(f"/proc/{process.proc.pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
    return round(int(line.split()[1]) / 1024, 1)


if __name__ == "__main__":
    main()
