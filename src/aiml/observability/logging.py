"""Structured logs: one JSON object per line, with the request id of the request served."""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import os
import queue
import sys
import threading
import time
from typing import Any

import orjson

from .context import request_id

__all__ = ["JsonFormatter", "configure_logging"]

# Attributes every LogRecord has; anything else was passed in ``extra`` and is logged too,
# unless its name starts with "_": a library's own bookkeeping, such as the
# ``_ray_timestamp_ns`` that Ray's record factory adds to every record once Ray is imported.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or request_id.get(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(fmt: str = "json", level: str = "info") -> None:
    """Route aiml's, uvicorn's and MLflow's loggers through one handler on stderr.

    Records are formatted and written by a background thread (a queue in between), so the
    event loop only hands a record over: formatting and writing an access line took about a
    tenth of a gateway request's CPU when done inline (measured). That thread wakes up a
    few times a second and writes what has piled up, rather than once per record: waking
    per record made the interpreter switch threads on every request, which cost a quarter
    of the throughput at 64 concurrent requests and stretched p99 several-fold (measured).
    """
    handler = logging.StreamHandler(_own_stderr())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = _BatchingListener(records, handler)
    listener.start()
    atexit.register(listener.stop)
    root = logging.getLogger()
    root.handlers[:] = [_ContextQueueHandler(records)]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # aiml logs each request itself


def _own_stderr() -> Any:
    """A stream on a private copy of the process's stderr.

    llama-cpp-python silences a non-verbose model load by pointing file descriptors 1 and 2
    at /dev/null (``dup2``) for the whole process: a log writer using fd 2 then loses every
    line written meanwhile (measured: 77% of access lines across 18 load/unload cycles).
    A duplicate descriptor keeps pointing at the real stderr whatever happens to fd 2.
    """
    try:
        fd = os.dup(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):  # no real stderr (captured in tests)
        return sys.stderr
    return os.fdopen(fd, "w", buffering=1, encoding="utf-8", errors="backslashreplace")


class _ContextQueueHandler(logging.handlers.QueueHandler):
    """Keeps the request id (a context variable) with the record as it changes threads."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record.request_id = request_id.get()
        return record


class _BatchingListener(threading.Thread):
    """Drains the record queue every ``interval_s`` and hands the records to ``handler``."""

    def __init__(
        self,
        records: queue.SimpleQueue[logging.LogRecord],
        handler: logging.Handler,
        interval_s: float = 0.1,
    ) -> None:
        super().__init__(name="aiml-log-writer", daemon=True)
        self._records = records
        self._handler = handler
        self._interval_s = interval_s
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.wait(self._interval_s):
            self._drain()
        self._drain()

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=5)

    def _drain(self) -> None:
        while True:
            try:
                record = self._records.get_nowait()
            except queue.Empty:
                break
            if record.levelno >= self._handler.level:
                self._handler.handle(record)
        self._handler.flush()
