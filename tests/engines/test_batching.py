"""Continuous batching of llama.cpp models on the real SmolLM2 GGUF: concurrent streams
match sequential ones, cancelling one leaves the rest right, the context limit ends with
"length", a full queue is served first come first served, prefixes are reused, and the KV
cache is counted in the pool's budget."""

from __future__ import annotations

import asyncio
import ctypes
import json
import threading
from collections.abc import Callable
from typing import Any

import llama_cpp
import pytest

from aiml.engines.llamacpp.native import kv_bytes_per_token, read_metadata
from aiml.services import Services
from aiml.types import ChatMessage, Generation, OutputFormat, SamplingParams
from tests.conftest import ModelFiles, Registry, RunningAiml, resolve

pytestmark = pytest.mark.slow

QUESTIONS = ["What is 2+2?", "Name three colors.", "Write one sentence about cats."]
GREEDY = SamplingParams(max_tokens=16, temperature=0)


@pytest.fixture
def smol(registry: Registry, model_files: ModelFiles) -> None:
    registry.register_files(model_files.smollm2, "smol", task="chat")


async def chat(services: Services, question: str, params: SamplingParams) -> Generation:
    model = await resolve(services, "llamacpp", "smol")
    engine = services.engines["llamacpp"]
    return await engine.chat(model, [ChatMessage("user", question)], params)


async def test_concurrent_streams_match_sequential_ones(
    smol: None, local_services: Callable[..., Services]
) -> None:
    services = local_services(llamacpp_parallel=4)
    alone = [(await chat(services, q, GREEDY)).text for q in QUESTIONS]
    together = await asyncio.gather(*(chat(services, q, GREEDY) for q in QUESTIONS))
    assert [g.text for g in together] == alone
    (entry,) = services.pool.entries()
    stats = entry.loaded.stats()
    assert max(stats.batch_sizes) >= 2  # they really were decoded together


async def test_cancelling_one_stream_leaves_the_others_correct(
    smol: None, local_services: Callable[..., Services]
) -> None:
    services = local_services(llamacpp_parallel=4)
    alone = [(await chat(services, q, GREEDY)).text for q in QUESTIONS]
    model = await resolve(services, "llamacpp", "smol")
    engine = services.engines["llamacpp"]
    doomed = engine.stream_chat(
        model, [ChatMessage("user", "Tell me a long story.")], SamplingParams(max_tokens=300)
    )
    others = asyncio.gather(*(chat(services, q, GREEDY) for q in QUESTIONS))
    await anext(doomed)
    await doomed.aclose()  # hangs up mid-batch
    assert [g.text for g in await others] == alone
    (entry,) = services.pool.entries()
    loop = asyncio.get_running_loop()
    hung_up = loop.time()
    while entry.users or entry.loaded.stats().running:  # dropped at the scheduler's next step
        assert loop.time() - hung_up < 1.0
        await asyncio.sleep(0.01)


async def test_a_sequence_at_the_context_limit_ends_with_length(
    smol: None, local_services: Callable[..., Services]
) -> None:
    services = local_services(llamacpp_n_ctx=64, llamacpp_parallel=2)
    reply = await chat(
        services, "Tell me a long story.", SamplingParams(max_tokens=500, ignore_eos=True)
    )
    assert reply.finish_reason == "length"
    assert reply.prompt_tokens is not None and reply.completion_tokens is not None
    (entry,) = services.pool.entries()
    window = entry.handle.scheduler.n_ctx_seq  # llama.cpp rounds the context up a little
    assert window < 200
    assert reply.prompt_tokens + reply.completion_tokens <= window
    assert reply.completion_tokens < 500


async def test_64_requests_on_4_slots_all_complete_in_order_of_arrival(
    smol: None, local_services: Callable[..., Services]
) -> None:
    services = local_services(llamacpp_parallel=4, max_queue=128)
    model = await resolve(services, "llamacpp", "smol")
    engine = services.engines["llamacpp"]
    await engine.preload(model)
    (entry,) = services.pool.entries()
    scheduler = entry.handle.scheduler
    arrival = {tuple(entry.handle.native.tokenize(f"Item {i}:")): i for i in range(64)}
    order: list[int] = []
    scheduler.admitted = lambda job: order.append(arrival[tuple(job.tokens)])
    params = SamplingParams(max_tokens=4, ignore_eos=True, temperature=0.8)

    async def one(i: int) -> Generation:
        return await engine.generate(model, f"Item {i}:", params)

    results = []
    for i in range(64):  # arrivals in a known order
        results.append(asyncio.ensure_future(one(i)))
        await asyncio.sleep(0)
    done = await asyncio.gather(*results)
    assert all(g.completion_tokens == 4 for g in done)
    assert order == list(range(64))


async def test_a_shared_prefix_is_not_read_twice(
    smol: None, local_services: Callable[..., Services]
) -> None:
    services = local_services(llamacpp_parallel=4)
    system = ChatMessage("system", "You are a careful assistant. " * 20)
    model = await resolve(services, "llamacpp", "smol")
    engine = services.engines["llamacpp"]
    first = await engine.chat(model, [system, ChatMessage("user", "Hi!")], GREEDY)
    (entry,) = services.pool.entries()
    before = entry.loaded.stats().reused_prompt_tokens
    second = await engine.chat(model, [system, ChatMessage("user", "Hello?")], GREEDY)
    reused = entry.loaded.stats().reused_prompt_tokens - before
    assert first.prompt_tokens and second.prompt_tokens
    assert reused >= first.prompt_tokens - 10  # all of the system prompt came from the cache


async def test_the_kv_cache_is_counted_in_the_models_size(
    smol: None, local_services: Callable[..., Services], model_files: ModelFiles
) -> None:
    services = local_services(llamacpp_parallel=8, llamacpp_n_ctx=1024)
    await chat(services, "Hi", GREEDY)
    (entry,) = services.pool.entries()
    kv = kv_bytes_per_token(read_metadata(model_files.smollm2)) * 1024 * 8
    assert entry.size_bytes >= model_files.smollm2.stat().st_size + kv
    assert services.pool.used_bytes <= services.pool.max_bytes


def test_scheduler_metrics_reach_metrics_and_the_stats_route(
    start_aiml: Callable[..., RunningAiml], registry: Registry, model_files: ModelFiles
) -> None:
    registry.register_files(model_files.smollm2, "smol", task="chat")
    aiml = start_aiml()
    body = {"task": "text-generation", "engine": "llamacpp", "model_name": "smol",
            "data": {"inputs": "Once upon a time"},
            "options": {"max_tokens": 6, "ignore_eos": True}}  # fmt: skip
    with aiml.client() as client:
        for _ in range(2):
            assert client.post("/inference/infer", json=body).status_code == 200
        stats = client.get("/inference/stats").json()["stats"]["models"]
        (model,) = [s for key, s in stats.items() if key.endswith("smol/1")]
        assert model["generated_tokens"] >= 12 and model["running"] == 0
        assert model["reused_prompt_tokens"] > 0  # the second prompt is the first one's prefix
        metrics = client.get("/metrics").text
    for name in ("sequences_running", "sequences_waiting", "tokens_per_second",
                 "prompt_tokens_total", "prompt_tokens_reused_total", "batch_size"):  # fmt: skip
        assert f"aiml_llamacpp_{name}" in metrics, name
    assert 'model="llamacpp:smol/1"' in metrics


async def test_a_finished_sequence_is_no_longer_running_when_its_request_hears_so(
    smol: None, local_services: Callable[..., Services]
) -> None:
    # CI once read running == 1 from the stats right after an answer: the scheduler told the
    # request it was done before it freed the sequence. Record the gauge at that moment.
    from aiml.engines.llamacpp.native import Sampling
    from aiml.engines.llamacpp.scheduler import Job

    services = local_services(llamacpp_parallel=2)
    await chat(services, "Hi", GREEDY)
    (entry,) = services.pool.entries()
    scheduler = entry.loaded.handle.scheduler
    finished = asyncio.get_running_loop().create_future()
    loop = asyncio.get_running_loop()

    def emit(kind: str, value: object) -> None:
        if kind == "done":
            seen = scheduler.stats.running
            loop.call_soon_threadsafe(finished.set_result, seen)

    tokens = entry.loaded.handle.native.tokenize("Once upon a time")
    scheduler.submit(Job(tokens=tokens, sampling=Sampling(temperature=0), max_tokens=3,
                         stop=(), emit=emit, ignore_eos=True))  # fmt: skip
    assert await asyncio.wait_for(finished, 60) == 0


class HeldGrammar:
    """Holds llama.cpp's grammar sampler where it filters a whole vocabulary (not where it
    checks one picked token) until released, through the public bindings' functions."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entered, self.release = threading.Event(), threading.Event()
        grammars: set[int | None] = set()
        last_size = threading.local()  # the size of the array this thread built last
        init, apply = llama_cpp.llama_sampler_init_grammar, llama_cpp.llama_sampler_apply
        token_array = llama_cpp.llama_token_data_array

        def init_grammar(*args: Any) -> Any:
            sampler = init(*args)
            grammars.add(ctypes.cast(sampler, ctypes.c_void_p).value)
            return sampler

        def array(*args: Any) -> Any:
            last_size.n = args[1]
            return token_array(*args)

        def apply_sampler(sampler: Any, candidates: Any) -> None:
            if ctypes.cast(sampler, ctypes.c_void_p).value in grammars and last_size.n > 1:
                self.entered.set()
                self.release.wait(60)
            apply(sampler, candidates)

        monkeypatch.setattr(llama_cpp, "llama_sampler_init_grammar", init_grammar)
        monkeypatch.setattr(llama_cpp, "llama_token_data_array", array)
        monkeypatch.setattr(llama_cpp, "llama_sampler_apply", apply_sampler)


async def test_a_grammar_filtering_the_vocabulary_never_holds_up_the_batch(
    smol: None, local_services: Callable[..., Services], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A grammar that refuses the model's pick filters the whole vocabulary, which takes
    seconds for a large enum: meanwhile the model's other requests go on."""
    services = local_services(llamacpp_parallel=4)
    alone = (await chat(services, QUESTIONS[0], GREEDY)).text  # loaded, and the answer
    held = HeldGrammar(monkeypatch)
    schema = {"type": "string", "enum": ["zqx-one", "zqx-two"]}  # never the model's pick
    constrained = SamplingParams(
        max_tokens=16, temperature=0, output_format=OutputFormat(json.dumps(schema))
    )
    slow = asyncio.ensure_future(chat(services, "Say hello.", constrained))
    try:
        assert await asyncio.to_thread(held.entered.wait, 60)
        other = await asyncio.wait_for(chat(services, QUESTIONS[0], GREEDY), 20)
        assert other.text == alone
        assert not slow.done()  # still held on its grammar
    finally:
        held.release.set()
    assert json.loads((await slow).text) in schema["enum"]
