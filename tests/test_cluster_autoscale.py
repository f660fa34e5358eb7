"""Model replicas autoscale on queue length: a real one-node Ray cluster, one front
(``aiml serve --ray``) with one to two replicas and a target of one request in flight each.
Four streams at once add a replica; when they end, Ray goes back to one.

Ray's delays are shortened through aiml's own settings (``AIML_RAY_UPSCALE_DELAY_S`` ...)
and the front reports its queue every half second (Ray's own push interval variable). The
replica count is read by a separate process: Serve keeps one client per process, and this
one may already have joined another test's (gone) cluster.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import ModelFiles, Registry
from tests.fakes.processes import Process, aiml_serve
from tests.fakes.ray_nodes import start_ray_node, stop_ray
from tests.fakes.servers import free_port

pytestmark = pytest.mark.slow

pytest.importorskip("ray.serve")

APP = "aiml-autoscale"


@dataclass
class Front:
    process: Process
    address: str

    def running_replicas(self) -> int:
        script = (
            "import sys, ray; from ray import serve;"
            "ray.init(address=sys.argv[1], log_to_driver=False, logging_level='ERROR');"
            f"d = serve.status().applications[{APP!r}].deployments['ModelReplica'];"
            "print(d.replica_states.get('RUNNING', 0))"
        )
        answer = subprocess.run(
            [sys.executable, "-c", script, self.address],
            capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
        return int(answer.stdout.strip().splitlines()[-1])


@pytest.fixture
def front(tmp_path: Path, registry: Registry, model_files: ModelFiles) -> Iterator[Front]:
    registry.register_files(model_files.smollm2, "smol", task="text-generation")
    port = free_port()
    start_ray_node("--head", f"--port={port}", "--include-dashboard=false", cpus=2)
    settings = {
        "RAY_ADDRESS": f"127.0.0.1:{port}",
        "RAY_AUTH_MODE": "disabled",
        "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
        "MLFLOW_TRACKING_URI": registry.uri,
        "AIML_ENGINES": "llamacpp",
        "AIML_RAY_APP": APP,
        "AIML_RAY_MIN_REPLICAS": "1",
        "AIML_RAY_MAX_REPLICAS": "2",
        "AIML_RAY_TARGET_ONGOING_REQUESTS": "1",
        "AIML_RAY_REPLICA_CPUS": "0.5",
        "AIML_RAY_UPSCALE_DELAY_S": "1",
        "AIML_RAY_DOWNSCALE_DELAY_S": "2",
        "AIML_RAY_LOOK_BACK_S": "2",
        "AIML_LLAMACPP_PARALLEL": "4",
        "AIML_LLAMACPP_N_CTX": "512",
        "AIML_LLAMACPP_THREADS": "1",
    }
    process = aiml_serve(tmp_path / "front", settings, extra_args=["--ray"])
    try:
        process.start(timeout_s=240)
        yield Front(process, settings["RAY_ADDRESS"])
    finally:
        process.stop()
        stop_ray()


def test_replicas_scale_up_on_queue_length_and_back_down(front: Front) -> None:
    url = front.process.health_url.removesuffix("/health/live")
    body = {"task": "text-generation", "engine": "llamacpp", "model_name": "smol",
            "data": {"inputs": "Once upon a time"}, "stream": True,
            "options": {"max_tokens": 200, "ignore_eos": True}}  # fmt: skip
    assert front.running_replicas() == 1
    scaled = threading.Event()
    failures: list[str] = []

    def keep_streaming() -> None:  # one client: a new stream as soon as the last one ends
        with httpx.Client(timeout=120) as client:
            while not scaled.is_set():
                answer = client.post(f"{url}/inference/infer", json=body)
                if answer.status_code != 200:
                    failures.append(answer.text)

    clients = [threading.Thread(target=keep_streaming) for _ in range(4)]
    for client in clients:
        client.start()
    try:
        deadline = time.monotonic() + 120
        while front.running_replicas() < 2:
            assert time.monotonic() < deadline, "no second replica under four streams"
    finally:
        scaled.set()
        for client in clients:
            client.join()
    assert failures == []
    deadline = time.monotonic() + 120
    while front.running_replicas() > 1:  # the load is gone: back to the minimum
        assert time.monotonic() < deadline, "the idle second replica was not removed"
