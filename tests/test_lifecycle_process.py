"""The model lifecycle in a real ``aiml serve`` process: SIGTERM while streams run past
the drain timeout exits cleanly (it died with SIGSEGV when shutdown closed a model under a
generating thread), and no log line is lost while llama.cpp loads a model (it points the
process's stdout and stderr at /dev/null during a load)."""

from __future__ import annotations

import json
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import ModelFiles, Registry
from tests.fakes.processes import Process, aiml_serve

pytestmark = pytest.mark.slow

STORY = [{"role": "user", "content": "Write a very long story about cats."}]
STREAM = {"model": "smol", "stream": True, "max_tokens": 1900, "temperature": 0.8}
STREAM["messages"] = STORY
# AIML_TEST_SIGTERM_RUNS=100 for a soak.
RUNS = int(__import__("os").environ.get("AIML_TEST_SIGTERM_RUNS", "20"))
TARGET = {"engine": "llamacpp", "model_name": "smol"}


def base_url(server: Process) -> str:
    return server.health_url.removesuffix("/health/live")


def stream_until_cut(base: str, started: threading.Event) -> None:
    try:
        with (
            httpx.Client(base_url=base, timeout=30) as client,
            client.stream("POST", "/v1/chat/completions", json=STREAM) as response,
        ):
            for _ in response.iter_bytes():
                started.set()
    except httpx.HTTPError:
        pass  # the server went away mid-stream: expected
    finally:
        started.set()


@pytest.mark.timeout(RUNS * 15)  # ~6 s a run, two at a time; room for a loaded machine
def test_sigterm_with_streams_running_past_a_1s_drain_exits_cleanly_every_time(
    tmp_path: Path, registry: Registry, model_files: ModelFiles
) -> None:
    registry.register_files(model_files.smollm2, "smol", task="chat")
    env = {
        "MLFLOW_TRACKING_URI": registry.uri,
        "AIML_ENGINES": "llamacpp",
        "AIML_DRAIN_TIMEOUT_S": "1",
        "AIML_LLAMACPP_N_CTX": "2048",
        "AIML_LLAMACPP_THREADS": "1",  # two servers share the two cores
    }

    def one_run(run: int) -> int:
        server = aiml_serve(tmp_path / f"aiml-{run % 2}", env)  # the model files stay cached
        server.start(timeout_s=120)
        streams = [threading.Event() for _ in range(2)]
        clients = [
            threading.Thread(target=stream_until_cut, args=(base_url(server), started))
            for started in streams
        ]
        for client in clients:
            client.start()
        for started in streams:
            assert started.wait(120), f"run {run}: no stream: {server.log.read_text()[-3000:]}"
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(timeout=120)
        server.proc = None
        for client in clients:
            client.join(timeout=60)
        return code

    # Two at a time: a process's start is one core's work, and there are two.
    with ThreadPoolExecutor(max_workers=2) as runs:
        codes = list(runs.map(one_run, range(RUNS)))
    assert codes == [0] * RUNS, codes  # a signal death is negative (-11: SIGSEGV)


def test_no_access_line_is_lost_across_20_model_loads(
    tmp_path: Path, registry: Registry, model_files: ModelFiles
) -> None:
    registry.register_files(model_files.smollm2, "smol", task="chat")
    env = {"MLFLOW_TRACKING_URI": registry.uri, "AIML_ENGINES": "llamacpp"}
    server = aiml_serve(tmp_path / "aiml", env, log_level="info")
    server.start()
    sent: list[str] = []
    stop = threading.Event()

    def steady_traffic() -> None:  # requests land while the loads run, too
        with httpx.Client(base_url=base_url(server), timeout=30) as client:
            while not stop.is_set():
                client.get("/inference/stats").raise_for_status()
                sent.append("GET /inference/stats")

    traffic = threading.Thread(target=steady_traffic)
    traffic.start()
    try:
        with httpx.Client(base_url=base_url(server), timeout=60) as client:
            for _ in range(20):
                assert client.post("/admin/models/load", json=TARGET).status_code == 200
                sent.append("POST /admin/models/load")
                assert client.post("/admin/models/unload", json=TARGET).status_code == 200
                sent.append("POST /admin/models/unload")
    finally:
        stop.set()
        traffic.join(timeout=30)
    assert server.stop() == 0
    lines = [json.loads(line) for line in server.log.read_text().splitlines() if line[:1] == "{"]
    access = [e["msg"].rsplit(" ", 1)[0] for e in lines if e["logger"] == "aiml.access"]
    assert sorted(access) == sorted(sent), (len(access), len(sent))
    loads = [e for e in lines if e["msg"].startswith("loaded llamacpp model smol/1")]
    assert len(loads) == 20
    assert sum(e["msg"].endswith(": unload") for e in lines) == 20
