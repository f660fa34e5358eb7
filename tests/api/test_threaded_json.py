"""Large JSON bodies are parsed on a worker thread, small ones on the event loop."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from aiml.api import threaded_json
from tests.conftest import RunningAiml


def test_a_large_json_body_is_parsed_off_the_event_loop(
    start_aiml: Callable[..., RunningAiml], monkeypatch: pytest.MonkeyPatch
) -> None:
    aiml = start_aiml()
    parsed: list[tuple[int, threading.Thread]] = []

    def parse(body: bytes) -> Any:
        parsed.append((len(body), threading.current_thread()))
        return json.loads(body)

    monkeypatch.setattr(threaded_json, "parse_json", parse)
    small = {"task": "chat", "engine": "ollama", "model_name": "llama2:7b",
             "data": {"messages": [{"role": "user", "content": "hi"}]}}  # fmt: skip
    large = {**small, "data": {"messages": [{"role": "user", "content": "x" * 300_000}]}}
    for body in (small, large):  # answered or refused, both are parsed first
        httpx.post(f"{aiml.url}/inference/infer", json=body, timeout=30)
    (small_size, on_loop), (large_size, worker) = parsed
    assert small_size < threaded_json.THREAD_FROM_BYTES <= large_size
    assert worker is not on_loop and worker.name.startswith("AnyIO worker thread")
    assert on_loop is not threading.main_thread()  # the server's own thread: its loop
