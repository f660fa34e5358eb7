"""Admission (429), deadlines (504), draining (503) and metrics that agree with the stats."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ModelFiles, Registry, RunningAiml, RunningOllama

CHAT = {"task": "chat", "engine": "ollama", "model_name": "llama2:7b",
        "data": {"messages": [{"role": "user", "content": "hi"}]}}  # fmt: skip


async def burst(url: str, count: int, body: dict[str, object]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        return list(
            await asyncio.gather(
                *(client.post("/inference/infer", json=body) for _ in range(count))
            )
        )


def metrics(aiml: RunningAiml) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with aiml.client() as client:
        text = client.get("/metrics").text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_past_the_queue_requests_get_429_with_retry_after(
    start_aiml: Callable[..., RunningAiml], ollama: RunningOllama
) -> None:
    aiml = start_aiml(max_in_flight=2, max_queue=2)
    ollama.state.delay_s = 0.5
    responses = asyncio.run(burst(aiml.url, 10, CHAT))
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 4 + [429] * 6  # 2 running + 2 queued; the rest refused at once
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "overloaded"
    assert ollama.state.counts["POST /api/chat"] == 4
    seen = metrics(aiml)
    assert seen[("aiml_requests_rejected_total", (("reason", "overloaded"),))] == 6
    assert seen[("aiml_requests_in_flight", (("engine", "ollama"),))] == 0
    assert seen[("aiml_queue_depth", (("engine", "ollama"),))] == 0


def test_the_deadline_cancels_the_engine_and_answers_504(
    start_aiml: Callable[..., RunningAiml], ollama: RunningOllama
) -> None:
    aiml = start_aiml(request_timeout_s=1.0, ollama_timeout_s=30.0)
    ollama.state.delay_s = 5.0
    with aiml.client() as client:
        started = time.monotonic()
        late = client.post("/inference/infer", json=CHAT)
        assert late.status_code == 504
        assert late.json()["error"]["code"] == "deadline_exceeded"
        assert 0.9 < time.monotonic() - started < 2.5
        started = time.monotonic()
        asked = client.post("/inference/infer", json=CHAT, headers={"x-request-timeout": "0.3"})
        assert asked.status_code == 504
        assert time.monotonic() - started < 1.0  # a request may ask for less...
        ollama.state.delay_s = 1.5
        longer = client.post("/inference/infer", json=CHAT, headers={"x-request-timeout": "60"})
        assert longer.status_code == 504  # ...never for more than the service allows
        bad = client.post("/inference/infer", json=CHAT, headers={"x-request-timeout": "soon"})
        assert bad.status_code == 422


def test_the_deadline_frees_a_local_model_mid_generation(
    start_aiml: Callable[..., RunningAiml], registry: Registry, model_files: ModelFiles
) -> None:
    registry.register_files(model_files.smollm2, "smol", task="chat")
    aiml = start_aiml()
    body = {"task": "text-generation", "engine": "llamacpp", "model_name": "smol",
            "data": {"inputs": "Once upon a time"},
            "options": {"max_tokens": 2000, "ignore_eos": True}}  # fmt: skip
    with aiml.client() as client:
        assert (
            client.post("/inference/infer", json={**body, "options": {"max_tokens": 2}}).status_code
            == 200
        )
        started = time.monotonic()
        late = client.post("/inference/infer", json=body, headers={"x-request-timeout": "0.5"})
        assert late.status_code == 504
        while any(m["in_use"] for m in client.get("/inference/loaded").json()["models"]):
            assert time.monotonic() - started < 1.5  # freed at the next token after the deadline
            time.sleep(0.02)
        streamed = client.post("/inference/infer", json={**body, "stream": True},
                               headers={"x-request-timeout": "0.5"})  # fmt: skip
        last = streamed.text.strip().splitlines()[-1]
        assert '"deadline_exceeded"' in last  # mid-stream: said in the stream


def test_draining_refuses_new_work_and_readiness_says_so(
    start_aiml: Callable[..., RunningAiml],
) -> None:
    aiml = start_aiml()
    aiml.services.manager.draining = True
    with aiml.client() as client:
        refused = client.post("/inference/infer", json=CHAT)
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "draining"
        assert refused.headers["retry-after"] == "5"
        ready = client.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["error"]["code"] == "draining"
        assert client.get("/health/live").status_code == 200


def test_metrics_agree_with_the_stats_route(
    start_aiml: Callable[..., RunningAiml], registry: Registry, ollama: RunningOllama
) -> None:
    registry.register("llama2-7b-chat", "llama2:7b", alias="production")
    aiml = start_aiml(max_in_flight=1, max_queue=0)
    with aiml.client() as client:
        for model in (
            "llama2-7b-chat@production",
            "llama2-7b-chat@production",
            "absent:1",
            "llama2:7b",
        ):
            client.post("/inference/infer", json={**CHAT, "model_name": model})
        client.post("/inference/infer", json={**CHAT, "task": "nope"})
        client.post("/inference/infer", json={**CHAT, "stream": True})
        client.post(
            "/v1/chat/completions",
            json={"model": "llama2-7b-chat", "messages": [{"role": "user", "content": "x"}]},
        )
    ollama.state.delay_s = 0.3
    asyncio.run(burst(aiml.url, 3, CHAT))  # one runs, two are refused
    with aiml.client() as client:
        stats = client.get("/inference/stats").json()["stats"]
    seen = metrics(aiml)
    requests = {
        labels: value for (name, labels), value in seen.items() if name == "aiml_requests_total"
    }
    assert sum(requests.values()) == stats["succeeded"] + stats["failed"] + stats["cancelled"]
    assert (
        sum(v for labels, v in requests.items() if dict(labels)["status"] == "200")
        == stats["succeeded"]
    )
    assert seen[("aiml_registry_lookups_total", ())] == stats["registry_lookups"]
    assert seen[("aiml_model_cache_hits_total", ())] == stats["cache"]["hits"]
    assert seen[("aiml_model_cache_misses_total", ())] == stats["cache"]["misses"]
    assert (
        seen[("aiml_requests_rejected_total", (("reason", "overloaded"),))]
        == stats["rejected"]["overloaded"]
        == 2
    )
    assert (
        seen[("aiml_generated_tokens_total", (("engine", "ollama"), ("task", "chat")))]
        == stats["generated_tokens"]
    )
    assert requests[(("engine", "ollama"), ("status", "422"), ("task", "unknown"))] == 1
    durations = seen[
        ("aiml_request_duration_seconds_count", (("engine", "ollama"), ("task", "chat")))
    ]
    chat_on_ollama = {"engine": "ollama", "task": "chat"}
    assert durations == sum(
        v for labels, v in requests.items() if chat_on_ollama.items() <= dict(labels).items()
    )
    assert (
        seen[("aiml_time_to_first_token_seconds_count", (("engine", "ollama"), ("task", "chat")))]
        == 1
    )


async def test_admission_is_first_come_first_served() -> None:
    from aiml.inference.admission import Admission

    gate = Admission("e", limit=1, queue=3)
    await gate.enter()
    order: list[str] = []

    async def wait(name: str) -> None:
        await gate.enter()
        order.append(name)

    first, b, c = (asyncio.ensure_future(wait(n)) for n in ("a", "b", "c"))
    await asyncio.sleep(0)
    b.cancel()  # b gives up while queued
    await asyncio.sleep(0)
    gate.leave()  # the slot goes to a, the longest waiter...
    newcomer = asyncio.ensure_future(wait("newcomer"))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert first.done()
    assert order == ["a"]  # ...and a newcomer cannot take it, it queues behind c
    assert gate.running == 1
    gate.leave()
    await c
    gate.leave()
    await newcomer
    assert order == ["a", "c", "newcomer"]
    gate.leave()
    assert (gate.running, gate.waiting) == (0, 0)
