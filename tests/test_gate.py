"""One request gate: hang-ups cancel non-streaming work too; lookups and admin loads are
refused while draining, bounded by the deadline and counted; readiness means "can serve";
evictions, load failures and cancellations show in /metrics; a call's worker threads are
its own only while it runs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import cast

import httpx
import pytest

from aiml.engines.threads import RunningThreads, request_threads
from aiml.errors import InvalidRequest
from aiml.inference.limits import Limits
from aiml.inference.manager import InferenceManager, fixed
from aiml.inference.router import TaskRouter
from aiml.observability.metrics import Metrics
from aiml.observability.stats import Stats
from aiml.registry.mlflow import MlflowRegistry
from aiml.registry.references import parse_reference
from aiml.types import ModelRef
from tests.conftest import ModelFiles, Registry, RunningAiml

LM = {"engine": "transformers", "model_name": "lm"}
CHAT = [{"role": "user", "content": "Write a very long story about cats."}]


def stats(aiml: RunningAiml) -> dict[str, object]:
    with aiml.client() as client:
        body: dict[str, object] = client.get("/inference/stats").json()["stats"]
        return body


def metric(aiml: RunningAiml, name: str) -> float:
    with aiml.client() as client:
        text = client.get("/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/inference/infer", "/v1/chat/completions"])
def test_a_non_streaming_request_is_cancelled_when_its_client_hangs_up(
    path: str,
    start_aiml: Callable[..., RunningAiml],
    registry: Registry,
    model_files: ModelFiles,
) -> None:
    registry.register_files(model_files.smollm2, "smol", task="chat")
    aiml = start_aiml(engines="llamacpp")
    with aiml.client() as client:  # loaded first: the client leaves mid-generation
        load = client.post("/admin/models/load", json={"engine": "llamacpp", "model_name": "smol"})
        assert load.status_code == 200, load.text
    if path == "/inference/infer":
        body: dict[str, object] = {
            "task": "chat", "engine": "llamacpp", "model_name": "smol",
            "data": {"messages": CHAT},
            "options": {"max_tokens": 1900, "temperature": 0.8, "ignore_eos": True},
        }  # fmt: skip
    else:  # ignore_eos: an answer sampled to an early end would come back within the 1 s
        body = {"model": "smol", "messages": CHAT, "max_tokens": 1900, "temperature": 0.8,
                "ignore_eos": True}  # fmt: skip
    with aiml.client(timeout=1.0) as client, pytest.raises(httpx.ReadTimeout):
        client.post(path, json=body)  # ~20 s of generation; the client leaves after 1 s
    hung_up = time.monotonic()
    (entry,) = aiml.services.pool.entries()
    while True:  # the slot, the lease and the model are free again at the next token
        current = stats(aiml)
        idle = current["in_flight"] == {"llamacpp": 0} and current["cancelled"] == 1
        if idle and entry.users == 0 and not entry.loaded.stats().running:
            break
        assert time.monotonic() - hung_up < 2.0, (current, entry.users)
        time.sleep(0.05)
    assert metric(aiml, "aiml_requests_cancelled_total") == 1
    assert current["by_status"] == {"200": 1, "499": 1}  # the load, the hung-up request


def test_lookups_and_admin_loads_are_refused_while_draining_and_counted(
    start_aiml: Callable[..., RunningAiml], registry: Registry, model_files: ModelFiles
) -> None:
    registry.register_files(model_files.tiny_lm_a, "lm", alias="prod")
    aiml = start_aiml(engines="transformers")
    with aiml.client() as client:
        assert client.get("/v1/models/lm@prod").status_code == 200
        load = client.post(
            "/admin/models/load", json={"engine": "transformers", "model_name": "lm"}
        )
        assert load.status_code == 200, load.text
        assert (
            client.post(
                "/admin/models/unload", json={"engine": "transformers", "model_name": "lm"}
            ).status_code
            == 200
        )
        counted = stats(aiml)["by_status"]
        assert counted == {"200": 3}, counted  # each went through the gate and was counted
        aiml.services.manager.draining = True
        for response in (
            client.get("/v1/models/lm@prod"),
            client.post("/api/show", json={"model": "lm"}),
            client.post("/admin/models/load", json=LM),
            client.post("/api/generate", json={"model": "lm"}),  # Ollama's "load" form
        ):
            assert response.status_code == 503, response.text
        assert aiml.services.pool.entries() == []  # nothing was loaded while draining
    assert stats(aiml)["rejected"] == {"draining": 4}


def test_a_lookup_past_its_deadline_is_a_504_and_counted(
    start_aiml: Callable[..., RunningAiml], registry: Registry, model_files: ModelFiles
) -> None:
    registry.register_files(model_files.tiny_lm_a, "lm")
    aiml = start_aiml(engines="transformers")
    resolver = aiml.services.router.resolver
    real = resolver.engine_for

    async def slow_engine_for(ref: object) -> str:
        import asyncio

        await asyncio.sleep(5)
        return await real(ref)  # type: ignore[arg-type]

    resolver.engine_for = slow_engine_for  # type: ignore[method-assign]
    started = time.monotonic()
    with aiml.client() as client:
        answer = client.post(
            "/v1/chat/completions",
            json={"model": "lm", "messages": CHAT},
            headers={"x-request-timeout": "0.3"},
        )
    assert answer.status_code == 504, answer.text
    assert time.monotonic() - started < 2
    assert stats(aiml)["errors"] == {"deadline_exceeded": 1}


def test_ready_on_the_quickstarts_defaults_without_an_ollama_server(
    start_aiml: Callable[..., RunningAiml], registry: Registry, model_files: ModelFiles
) -> None:
    registry.register_files(model_files.tiny_lm_a, "lm")
    aiml = start_aiml(engines="ollama,transformers", ollama_host="http://127.0.0.1:9")
    with aiml.client() as client:
        ready = client.get("/health/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["status"] == "degraded"
    assert ready.json()["degraded"] == ["ollama"]
    assert ready.json()["required"] == ["transformers"]


def test_not_ready_when_an_engine_serving_registered_models_is_down(
    start_aiml: Callable[..., RunningAiml], registry: Registry
) -> None:
    registry.register("llama2-7b-chat", "llama2:7b")  # an Ollama model in the registry
    aiml = start_aiml(engines="ollama,transformers", ollama_host="http://127.0.0.1:9")
    with aiml.client() as client:
        ready = client.get("/health/ready")
    assert ready.status_code == 503, ready.text
    assert ready.json()["required"] == ["ollama", "transformers"]


def test_required_engines_is_a_setting(start_aiml: Callable[..., RunningAiml]) -> None:
    aiml = start_aiml(
        engines="ollama,transformers", ollama_host="http://127.0.0.1:9", required_engines="ollama"
    )
    with aiml.client() as client:
        assert client.get("/health/ready").status_code == 503


def test_evictions_and_load_failures_are_in_the_metrics(
    start_aiml: Callable[..., RunningAiml], registry: Registry, model_files: ModelFiles
) -> None:
    registry.register_files(model_files.tiny_lm_a, "a")
    registry.register_files(model_files.tiny_lm_b, "b")
    aiml = start_aiml(engines="transformers", max_loaded_models=1)
    with aiml.client() as client:
        for name in ("a", "b"):  # b's load evicts a for room
            load = client.post(
                "/admin/models/load", json={"engine": "transformers", "model_name": name}
            )
            assert load.status_code == 200, load.text
        for file in (aiml.services.settings.model_cache_dir / "a").rglob("*.json"):
            file.write_text("{not json")  # a's files, corrupted in the cache
        failed = client.post(
            "/admin/models/load", json={"engine": "transformers", "model_name": "a"}
        )
        assert failed.status_code == 500, failed.text
        text = client.get("/metrics").text
    assert 'aiml_model_evictions_total{reason="room"} ' in text
    assert metric(aiml, 'aiml_model_evictions_total{reason="room"}') >= 1
    assert metric(aiml, "aiml_model_load_failures_total") == 1


async def test_a_task_spawned_after_a_call_does_not_see_the_calls_threads() -> None:
    """The gate's threads context ends with its call, answered or failed (it leaked into the
    rest of the task: a pool load, or a keep-alive connection's next request's task)."""
    stats = Stats()
    no_registry = cast(MlflowRegistry, None)  # the calls below never reach it
    router = TaskRouter({}, no_registry, ttl_s=60, stats=stats)
    limits = Limits(max_prompt_chars=1, max_tokens=1, max_embed_inputs=1, max_image_bytes=1)
    manager = InferenceManager(router, no_registry, stats, limits=limits, admission={},
                               metrics=Metrics(), request_timeout_s=10)  # fmt: skip
    seen: list[RunningThreads | None] = []

    async def works(engine: str, ref: ModelRef) -> None:
        seen.append(request_threads.get())

    async def fails(engine: str, ref: ModelRef) -> None:
        seen.append(request_threads.get())
        raise InvalidRequest("refused")

    async def spawned_sees() -> RunningThreads | None:
        return request_threads.get()

    locate = fixed("none", parse_reference("m"))
    await manager.gated("lookup", locate, works)
    with pytest.raises(InvalidRequest):
        await manager.gated("lookup", locate, fails)
    assert len(seen) == 2 and None not in seen and seen[0] is not seen[1]
    assert await asyncio.create_task(spawned_sees()) is None
    assert request_threads.get() is None
