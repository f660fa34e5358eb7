"""Schemas that used to crash or stall the process, against a real ``aiml serve`` child (so
a segfault fails a test instead of killing pytest), SmolLM2 under llama.cpp.

Bounds of 20,000 (``maxLength``, ``maxItems``, a pattern's ``{0,20000}``, in
``response_format`` and in a tool's parameters) are served or refused by name and the
process lives; 8,000 optional properties are a 400, not a 500; ``maxLength: 5000`` is
served; a 40,000-value enum does not slow another user's chat on the same model; a
multi-megabyte nested schema does not hold up /health/live.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ModelFiles, fresh_sqlite_registry
from tests.fakes.processes import Process, aiml_serve

pytestmark = pytest.mark.slow

ASK = [{"role": "user", "content": "Describe a cat as JSON."}]


@pytest.fixture(scope="module")
def child(
    tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path, model_files: ModelFiles
) -> Iterator[Process]:
    work = tmp_path_factory.mktemp("schema-limits")
    registry = fresh_sqlite_registry(work, sqlite_template)
    registry.register_files(model_files.smollm2, "smol", task="chat")
    env = {
        "MLFLOW_TRACKING_URI": registry.uri,
        "AIML_ENGINES": "llamacpp",
        "AIML_LLAMACPP_PARALLEL": "2",
        "AIML_LLAMACPP_N_CTX": "512",
        "AIML_LLAMACPP_THREADS": "1",
    }
    process = aiml_serve(work / "aiml", env)
    process.start()
    yield process
    process.stop()


def url(child: Process) -> str:
    return child.health_url.removesuffix("/health/live")


def alive(child: Process) -> None:
    assert child.proc is not None
    code = child.proc.poll()
    if code is not None:
        pytest.fail(f"child died with {signal.Signals(-code).name if code < 0 else code}")


def chat(child: Process, timeout: float = 60, **body: Any) -> httpx.Response:
    payload = {"model": "smol", "messages": ASK, "temperature": 0, "max_tokens": 64, **body}
    try:
        response = httpx.post(f"{url(child)}/v1/chat/completions", json=payload, timeout=timeout)
    except httpx.TransportError:
        assert child.proc is not None
        with contextlib.suppress(subprocess.TimeoutExpired):  # a crash: it is exiting
            child.proc.wait(10)
        alive(child)
        raise
    alive(child)
    return response


def as_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    }


def as_tool(schema: dict[str, Any]) -> dict[str, Any]:
    return {"tools": [{"type": "function", "function": {"name": "f", "parameters": schema}}],
            "tool_choice": "required"}  # fmt: skip


def tree(depth: int) -> dict[str, Any]:
    if depth == 0:
        return {"type": "string"}
    return {"properties": {"a": tree(depth - 1), "b": tree(depth - 1)}}


def test_max_length_5000_is_served(child: Process) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 5000}},
              "required": ["name"]}  # fmt: skip
    response = chat(child, max_tokens=200, **as_format(schema))
    assert response.status_code == 200, response.text
    answer = json.loads(response.json()["choices"][0]["message"]["content"])
    assert isinstance(answer["name"], str) and len(answer["name"]) <= 5000


def test_8000_optional_properties_are_a_400_naming_the_limit(child: Process) -> None:
    schema = {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(8000)}}
    for body in (as_format(schema), as_tool(schema)):
        response = chat(child, **body)
        assert response.status_code == 400, response.text
        assert "optional properties" in response.json()["error"]["message"]


def test_a_40k_enum_does_not_slow_another_users_chat(child: Process) -> None:
    chat(child, max_tokens=8)  # the model is loaded
    enum = as_format({"enum": [f"value-{i}" for i in range(40_000)]})
    answered: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: answered.append(chat(child, timeout=20, **enum)))
    thread.start()
    latencies = []
    while thread.is_alive() or not latencies:  # at least one chat, the rest while it runs
        started = time.monotonic()
        assert chat(child, timeout=5, max_tokens=8).status_code == 200
        latencies.append(time.monotonic() - started)
        assert len(latencies) < 50
    thread.join()
    assert answered and answered[0].status_code == 400, answered
    assert "the most is" in answered[0].json()["error"]["message"]
    assert max(latencies) < 2.0, latencies  # alone: ~0.1-0.3 s on 2 busy cores


def worst_health_while(child: Process, body: bytes) -> tuple[httpx.Response, float]:
    """Send ``body`` and poll /health/live until it is answered: the answer, and the
    slowest /health/live meanwhile."""
    answered: list[httpx.Response] = []

    def send() -> None:
        answered.append(httpx.post(f"{url(child)}/v1/chat/completions", content=body, timeout=60,
                                   headers={"content-type": "application/json"}))  # fmt: skip

    thread = threading.Thread(target=send)
    thread.start()
    latencies = [0.0]
    with httpx.Client(timeout=10) as client:
        while thread.is_alive():
            started = time.monotonic()
            client.get(child.health_url).raise_for_status()
            latencies.append(time.monotonic() - started)
    thread.join()
    alive(child)
    return answered[0], max(latencies)


def test_a_large_nested_schema_does_not_hold_up_health(child: Process) -> None:
    schema = as_format(tree(16))  # 65k leaves, ~2.8 MB
    # The edge reads and validates the body on the event loop whatever it holds (unavoidable):
    # the same body for a model that is not there measures that part alone.
    edge = json.dumps({"model": "no-such-model", "messages": ASK, **schema}).encode()
    refused, edge_worst = worst_health_while(child, edge)
    assert refused.status_code == 404, refused.text
    body = json.dumps({"model": "smol", "messages": ASK, **schema}).encode()
    answered, worst = worst_health_while(child, body)
    assert worst < edge_worst + 0.5, (worst, edge_worst)  # the schema's own work: off the loop
    assert answered.status_code == 400, answered.text
    assert "the most is 524288" in answered.json()["error"]["message"]


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"s": {"type": "string", "maxLength": 20_000}},
         "required": ["s"]},
        {"type": "array", "items": {"type": "integer"}, "maxItems": 20_000},
        {"type": "string", "pattern": "^a{0,20000}$"},
    ],
    ids=["maxLength", "maxItems", "pattern"],
)  # fmt: skip
@pytest.mark.parametrize("where", ["response_format", "tools"])
def test_bounds_of_20000_are_served_or_refused_and_the_process_lives(
    child: Process, schema: dict[str, Any], where: str
) -> None:
    body = as_format(schema) if where == "response_format" else as_tool(schema)
    response = chat(child, **body)
    if "pattern" in schema:
        assert response.status_code == 400, response.text
        assert "the most a grammar spells out is 256" in response.json()["error"]["message"]
    elif where == "response_format":
        assert response.status_code == 200, response.text
        choice = response.json()["choices"][0]
        if choice["finish_reason"] == "stop":
            json.loads(choice["message"]["content"])
    else:  # a call, or the answer ran past max_tokens inside the string: named either way
        assert response.status_code in (200, 400), response.text
    assert httpx.get(child.health_url, timeout=5).status_code == 200
