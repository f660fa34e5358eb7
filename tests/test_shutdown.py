"""SIGTERM under load: readiness goes false, nothing in flight is lost, models unload, exit 0."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ModelFiles, Registry, RunningOllama
from tests.fakes.processes import aiml_serve

pytestmark = pytest.mark.slow

CHAT = {"task": "chat", "engine": "ollama", "model_name": "llama2:7b",
        "data": {"messages": [{"role": "user", "content": "hi"}]}}  # fmt: skip


def test_sigterm_drains_in_flight_requests_and_exits_cleanly(
    tmp_path: Path, registry: Registry, ollama: RunningOllama, model_files: ModelFiles
) -> None:
    registry.register_files(model_files.tiny_lm_a, "lm")
    env = {
        "MLFLOW_TRACKING_URI": registry.uri,
        "OLLAMA_HOST": ollama.url,
        "AIML_ENGINES": "ollama,transformers",
        "AIML_DRAIN_TIMEOUT_S": "20",
    }
    server = aiml_serve(tmp_path / "aiml", env, log_level="info")
    server.start()
    base = server.health_url.removesuffix("/health/live")
    with httpx.Client(base_url=base, timeout=30) as client:
        load = client.post(
            "/admin/models/load", json={"engine": "transformers", "model_name": "lm"}
        )
        assert load.status_code == 200, load.text

    ollama.state.delay_s = 2.0  # every request is still in flight when the signal comes
    results: list[int] = []

    def call() -> None:
        with httpx.Client(base_url=base, timeout=30) as client:
            results.append(client.post("/inference/infer", json=CHAT).status_code)

    workers = [threading.Thread(target=call) for _ in range(8)]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + 10
    while ollama.state.counts["POST /api/chat"] < 8:  # all eight reached the engine
        assert time.monotonic() < deadline
        time.sleep(0.02)

    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    with httpx.Client(base_url=base, timeout=5) as client:
        ready = client.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["error"]["code"] == "draining"
        refused = client.post("/inference/infer", json=CHAT)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "5"
    for worker in workers:
        worker.join(timeout=30)
    assert results == [200] * 8  # nothing in flight was lost
    code = server.proc.wait(timeout=30)
    assert code == 0
    log = [json.loads(line) for line in server.log.read_text().splitlines() if line.startswith("{")]
    messages = [entry["msg"] for entry in log]
    assert any(m.startswith("draining: not ready, 8 request(s) in flight") for m in messages)
    assert any("unloaded transformers model lm/1: shutdown" in m for m in messages)
    server.proc = None
