"""``scripts/team-stack`` for real: PostgreSQL, an MLflow server on it and a Ray head with
token authentication, all on loopback (which rests on a pinned Ray internal: see the
script's ``loopback_env``), kept out of what ``env`` exports; a front started by ``front``
joins it, and once it has deployed the replicas every socket is still on loopback but each
replica's gRPC server, which refuses a call without the token; the front traces what it
serves into the stack's MLflow on PostgreSQL (each request a trace with its registry version
and token counts, read back with MLflow's search); ``start`` brings back a part that is
down, ``status`` says which, ``stop`` leaves a Ray that is not the stack's running.

One test, its own state folder and free ports, and a second Ray head started beside it the
way the cluster tests start theirs. It took 62 s and 117 s on 2 shared, busy cores (MLflow
starting twice dominates), 42 s with the front's join added on a quieter run, and 51 s with
the front's deploy and the replica's token checked, 54 s with its traces read back from
MLflow (8 s of it); the suite has room for it (9.5 minutes without it on a fresh clone),
so it runs in CI with the other slow tests.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
from mlflow import MlflowClient

from tests.conftest import RunningOllama
from tests.fakes.postgres import postgres_bin
from tests.fakes.ray_nodes import marked_processes, start_ray_node, stop_ray
from tests.fakes.servers import free_port

pytestmark = pytest.mark.slow

pytest.importorskip("ray.serve")
grpc = pytest.importorskip("grpc")  # Ray's own dependency

SCRIPT = Path(__file__).parent.parent / "scripts" / "team-stack"
LOOPBACK = {"127.0.0.1", "[::ffff:127.0.0.1]", "[::1]"}
EVERY_INTERFACE = {"*", "0.0.0.0", "[::]"}
# The one socket of the stack that no documented Ray 2.60 setting keeps on loopback: each
# Serve replica's inter-deployment gRPC server, bound to "[::]:0" in Ray's
# serve/_private/replica.py. Ray puts its token check on it (create_grpc_server_with_
# interceptors); the test dials it to see a call without the token refused.
REPLICA = "ray::ServeRepli"  # the process title, as /proc/PID/comm cuts it (15 characters)
REPLICA_SERVICE = "/ray.serve.ASGIService/HandleRequest"
CHAT = [{"role": "user", "content": "hello there"}]
TRACE_HEADER = "x-aiml-trace-id"


class Socket(NamedTuple):
    address: str
    port: int
    pid: int
    name: str | None


class Stack:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ports = {name: free_port() for name in ("PG", "MLFLOW", "RAY", "RAY_CLIENT")}
        self.env = {
            **os.environ,
            "AIML_STACK": str(folder),
            **{f"AIML_STACK_{name}_PORT": str(port) for name, port in self.ports.items()},
            "AIML_STACK_RAY_ARGS": "--num-cpus=1 --object-store-memory=150000000",
        }

    def run(self, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SCRIPT), command], env=self.env, capture_output=True, text=True, timeout=300
        )

    def processes(self) -> set[int]:
        """The stack's processes: its Ray, MLflow's group and PostgreSQL's."""
        found = marked_processes(f"AIML_STACK_RAY={self.folder}")
        mlflow = int((self.folder / "mlflow.pid").read_text())
        postmaster = int((self.folder / "pg/data/postmaster.pid").read_text().split()[0])
        for pid in os.listdir("/proc"):
            if pid.isdigit() and _group_or_parent(int(pid)) & {mlflow, postmaster}:
                found.add(int(pid))
        return found | {mlflow, postmaster}


def _group_or_parent(pid: int) -> set[int]:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return set()
    return {int(fields[1]), int(fields[2])}  # parent, process group


def _name(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def listening(pids: set[int]) -> list[Socket]:
    """Every TCP socket the processes listen on (``ss``), with the process that owns it."""
    table = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in table.splitlines():
        address, _, port = line.split()[3].rpartition(":")
        for pid in {int(pid) for pid in re.findall(r"pid=(\d+)", line)} & pids:
            found.append(Socket(address, int(port), pid, _name(pid)))
    return found


def _replica_call(port: int, token: str | None) -> str:
    """The status (its name) of an empty call to a replica's gRPC server, with ``token``."""
    metadata = [("authorization", f"Bearer {token}")] if token else None
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            channel.unary_unary(REPLICA_SERVICE)(b"", timeout=10, metadata=metadata)
        except grpc.RpcError as error:
            return str(error.code().name)
    return "OK"


@contextmanager
def _front(stack: Stack, extra: dict[str, str], within_s: float = 240.0) -> Iterator[str]:
    """``team-stack front`` with ``extra`` settings, serving (the test fails if it does
    not): its URL; ended on exit."""
    port = free_port()
    log = stack.folder / "front.log"
    env = {**stack.env, "AIML_API_KEYS": "", "AIML_HOME": str(stack.folder / "front"), **extra}
    with log.open("w") as out:
        front = subprocess.Popen(
            [str(SCRIPT), "front", "--port", str(port)], env=env,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + within_s
        while not _serves(port):
            assert front.poll() is None, f"the front exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"not serving: {log.read_text()[-2000:]}"
            time.sleep(0.5)  # polling a process that is starting; no event to wait on
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(front.pid, signal.SIGTERM)
        try:
            front.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(front.pid, signal.SIGKILL)
            front.wait(timeout=10)


def _serves(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=2).is_success
    except httpx.HTTPError:
        return False


def _deployed_sockets(stack: Stack, within_s: float = 120.0) -> list[Socket]:
    """The stack's sockets once a Serve replica (a front deploys them in the background)
    listens on two: its worker's and, when it is ready, its inter-deployment gRPC server."""
    deadline = time.monotonic() + within_s
    while True:
        sockets = listening(stack.processes())
        replicas = [socket.pid for socket in sockets if socket.name == REPLICA]
        if any(replicas.count(pid) >= 2 for pid in replicas):
            return sockets
        assert time.monotonic() < deadline, f"no Serve replica is ready: {sockets}"
        time.sleep(0.5)  # polling processes that are starting; no event to wait on


def _served_and_traced(front: str, mlflow: MlflowClient) -> None:
    """Requests the front serves become traces in the stack's MLflow (PostgreSQL), with the
    version that served them and the tokens the response counted."""
    with httpx.Client(base_url=front, timeout=60) as client:
        created = client.post("/models/register_ollama", json={
            "local_model_name": "llama2:7b", "registered_name": "stacked", "task": "chat",
            "alias": "production"})  # fmt: skip
        assert created.status_code == 201, created.text
        body = {"model": "stacked@production", "messages": CHAT}
        answers = [client.post("/v1/chat/completions", json=body) for _ in range(3)]
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    usage = {a.headers[TRACE_HEADER]: a.json()["usage"] for a in answers}
    traces = _traces_in(mlflow, set(usage))
    for trace_id, trace in traces.items():
        assert trace.info.tags["aiml.model_version"] == "stacked/1"
        root = next(s for s in trace.data.spans if s.parent_id is None)
        assert root.attributes["gen_ai.usage.input_tokens"] == usage[trace_id]["prompt_tokens"]
        assert root.attributes["gen_ai.usage.output_tokens"] == usage[trace_id][
            "completion_tokens"]  # fmt: skip
        stored = json.loads(trace.info.trace_metadata["mlflow.trace.tokenUsage"])
        assert stored["input_tokens"] == usage[trace_id]["prompt_tokens"]
        assert stored["output_tokens"] == usage[trace_id]["completion_tokens"] > 0
    version = mlflow.search_traces(
        locations=[_experiment(mlflow)], filter_string="tags.`aiml.model_version` = 'stacked/1'"
    )
    assert set(usage) <= {t.info.trace_id for t in version}


def _experiment(mlflow: MlflowClient) -> str:
    found = mlflow.get_experiment_by_name("aiml-traces")  # AIML_TRACE_EXPERIMENT's default
    assert found is not None
    return str(found.experiment_id)


def _traces_in(mlflow: MlflowClient, ids: set[str], within_s: float = 30.0) -> dict[str, Any]:
    """The traces ``ids`` once all are in MLflow: the front's exporter posts them from its
    own process, so the test can only look until they are there."""
    deadline = time.monotonic() + within_s
    while True:
        found = {}
        if mlflow.get_experiment_by_name("aiml-traces") is not None:
            traces = mlflow.search_traces(locations=[_experiment(mlflow)], max_results=100)
            found = {t.info.trace_id: t for t in traces if t.info.trace_id in ids}
        if set(found) == ids:
            return found
        assert time.monotonic() < deadline, f"traces in MLflow: {sorted(found)} of {sorted(ids)}"
        time.sleep(0.5)  # the front's exporter posts every 0.5 s; nothing here to wait on


@pytest.fixture
def stack() -> Iterator[Stack]:
    if postgres_bin() is None or shutil.which("ss") is None:
        pytest.skip("needs PostgreSQL and ss")
    # A short folder: Ray's socket paths under it must stay within 107 bytes.
    folder = Path(tempfile.mkdtemp(prefix="aiml-stack-"))
    folder.chmod(0o755)  # PostgreSQL runs as nobody when the tests run as root
    stack = Stack(folder)
    try:
        yield stack
    finally:
        stack.run("stop")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.timeout(600)
def test_the_team_stack_listens_on_loopback_restarts_what_is_down_and_stops_only_itself(
    stack: Stack, ollama: RunningOllama
) -> None:
    # Someone else's Ray on this machine, on other ports and in its own folder.
    other = Path(tempfile.mkdtemp(prefix="aiml-other-ray-"))
    start_ray_node("--head", f"--port={free_port()}", f"--temp-dir={other}",
                   f"--ray-client-server-port={free_port()}", "--include-dashboard=false",
                   cpus=1)  # fmt: skip
    try:
        others = {  # the other head's GCS and raylet
            pid
            for pid in marked_processes(f"AIML_TEST_RAY={os.getpid()}")
            if _name(pid) in ("gcs_server", "raylet")
        }
        assert len(others) == 2
        started = stack.run("start")
        assert started.returncode == 0, started.stderr
        assert f"export RAY_AUTH_TOKEN_PATH={stack.folder}/ray/auth_token" in started.stdout
        # Ray's internal single-machine switch stays out of the user's shell (there it makes
        # `ray start --address=...` abort): only the stack's own processes get it.
        shell = stack.run("env")
        assert shell.returncode == 0 and "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in shell.stdout
        assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in started.stdout
        status = stack.run("status")
        assert status.returncode == 0, status.stdout

        sockets = listening(stack.processes())
        ports = {socket.port for socket in sockets}
        assert {stack.ports["PG"], stack.ports["MLFLOW"], stack.ports["RAY"]} <= ports, sockets
        deadline = time.monotonic() + 30  # Ray's client server binds after `ray start` returns
        while stack.ports["RAY_CLIENT"] not in ports and time.monotonic() < deadline:
            time.sleep(0.2)
            sockets = listening(stack.processes())
            ports = {socket.port for socket in sockets}
        assert stack.ports["RAY_CLIENT"] in ports, sockets
        # Loopback only rests on a pinned Ray internal (scripts/team-stack, loopback_env):
        # a Ray upgrade that changes it binds every interface, and fails here.
        assert {socket.address for socket in sockets} <= LOOPBACK, sockets

        # A front started by the stack joins its Ray on loopback (from the user's shell with
        # only `env`'s settings, Ray would dial the machine's outward address instead).
        token = (stack.folder / "ray/auth_token").read_text().strip()
        mlflow = MlflowClient(tracking_uri=f"http://127.0.0.1:{stack.ports['MLFLOW']}")
        traced = {"AIML_TRACE_SAMPLE": "1.0", "OLLAMA_HOST": ollama.url}
        with _front(stack, traced) as front:
            sockets = _deployed_sockets(stack)
            # Every socket is on loopback but the replicas' gRPC servers (see REPLICA), one
            # each, and these refuse a call without the token or with another.
            outward = [socket for socket in sockets if socket.address not in LOOPBACK]
            assert all(s.address in EVERY_INTERFACE and s.name == REPLICA for s in outward), outward
            assert outward and len({s.pid for s in outward}) == len(outward), sockets
            for socket in outward:
                assert _replica_call(socket.port, None) == "UNAUTHENTICATED"
                assert _replica_call(socket.port, "0" * 64) == "UNAUTHENTICATED"
                assert _replica_call(socket.port, token) not in ("UNAUTHENTICATED", "UNAVAILABLE")
            _served_and_traced(front, mlflow)

        os.killpg(int((stack.folder / "mlflow.pid").read_text()), signal.SIGKILL)  # a crash
        status = stack.run("status")
        assert status.returncode == 1
        assert re.search(r"^mlflow\s+down", status.stdout, re.M), status.stdout
        assert re.search(r"^postgresql\s+up", status.stdout, re.M), status.stdout
        again = stack.run("start")  # PostgreSQL and Ray still run: MLflow comes back
        assert again.returncode == 0, again.stderr
        assert stack.run("status").returncode == 0

        stopped = stack.run("stop")
        assert stopped.returncode == 0, stopped.stderr
        status = stack.run("status")
        assert status.returncode == 1
        assert len(re.findall(r"\sdown$", status.stdout, re.M)) == 3, status.stdout
        assert not marked_processes(f"AIML_STACK_RAY={stack.folder}")
        assert {_name(pid) for pid in others} == {"gcs_server", "raylet"}  # the other runs on
    finally:
        stop_ray()
        shutil.rmtree(other, ignore_errors=True)
