"""Shadow traffic declared in the registry (``aiml.shadow.<alias>`` on the alias's version):
copies go to the candidate after the caller's answer, never adding to its latency (measured
side by side with an alias that has no shadow), are dropped and counted when too many run,
and are compared: both answers, their latencies, an exact match, and for embeddings the
cosine of their vectors."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import httpx

from tests.conftest import Registry, RunningAiml, RunningOllama

CHAT = [{"role": "user", "content": "hi"}]


def _timed(client: httpx.Client, model: str) -> float:
    started = time.perf_counter()
    answer = client.post("/v1/chat/completions", json={"model": model, "messages": CHAT})
    assert answer.status_code == 200, answer.text
    return time.perf_counter() - started


def _shadow_report(client: httpx.Client, key: str, until: Callable[[dict[str, Any]], bool]) -> Any:
    deadline = time.monotonic() + 10
    while True:
        report = client.get("/inference/stats").json()["stats"]["shadow"].get(key)
        if report is not None and until(report):
            return report
        assert time.monotonic() < deadline, report


def test_a_shadow_never_delays_the_primary_and_drops_when_full(
    registry: Registry, ollama: RunningOllama, start_aiml: Callable[..., RunningAiml]
) -> None:
    ollama.state.add("slow:1b", delay_s=0.4)  # the candidate takes 0.4 s a request
    for name in ("shadowed", "plain"):
        registry.register(name, "llama2:7b", task="chat", alias="production")
        registry.register(name, "slow:1b", task="chat")
    registry.client.set_model_version_tag("shadowed", "1", "aiml.shadow.production", "2:100")
    aiml = start_aiml()
    with aiml.client() as client:
        _timed(client, "shadowed@production")
        _timed(client, "plain@production")
        with_shadow, without = [], []
        for _ in range(30):  # interleaved, side by side
            with_shadow.append(_timed(client, "shadowed@production"))
            without.append(_timed(client, "plain@production"))
        ours, theirs = statistics.median(with_shadow), statistics.median(without)
        assert ours < theirs + 0.02, (ours, theirs)  # the copy's 0.4 s is nowhere in it
        assert max(with_shadow) < 0.3, max(with_shadow)
        report = _shadow_report(
            client, "shadowed@production -> 2", lambda r: r["compared"] + r["dropped"] == 31
        )
        assert report["dropped"] > 0  # 31 copies of 0.4 s in ~0.3 s: past the 8 running
        assert report["failed"] == 0
        report = _shadow_report(client, "shadowed@production -> 2", lambda r: r["compared"] >= 8)
        pair = report["pairs"][0]
        assert pair["primary"].startswith("llama2:7b") and pair["candidate"].startswith("slow:1b")
        assert pair["exact_match"] is False
        assert pair["candidate_s"] >= 0.4 > pair["primary_s"]
        stats = client.get("/inference/stats").json()["stats"]
        assert "shadowed/2" not in stats["by_version"]  # never counted as the caller's
        assert "plain@production -> 2" not in stats["shadow"]


def test_embeddings_are_compared_by_cosine(
    registry: Registry, start_aiml: Callable[..., RunningAiml]
) -> None:
    registry.register("emb", "nomic-embed-text:latest", task="embeddings", alias="production")
    registry.register("emb", "nomic-embed-text:latest", task="embeddings")
    registry.client.set_model_version_tag("emb", "1", "aiml.shadow.production", "2:100")
    aiml = start_aiml()
    with aiml.client() as client:
        answer = client.post("/v1/embeddings", json={"model": "emb@production", "input": "x"})
        assert answer.status_code == 200, answer.text
        report = _shadow_report(client, "emb@production -> 2", lambda r: r["compared"] >= 1)
    assert report["pairs"][0]["cosine"] == 1.0  # the same model: the same vectors
    assert report["exact_match_ratio"] == 1.0


def test_a_stream_is_copied_once_it_ended_and_compared_on_its_whole_text(
    registry: Registry, start_aiml: Callable[..., RunningAiml]
) -> None:
    registry.register("streamed", "llama2:7b", task="chat", alias="production")
    registry.register("streamed", "llama2:13b", task="chat")
    registry.client.set_model_version_tag("streamed", "1", "aiml.shadow.production", "2:100")
    aiml = start_aiml()
    body = {"model": "streamed@production", "messages": CHAT, "stream": True}
    with aiml.client() as client:
        with client.stream("POST", "/v1/chat/completions", json=body) as answer:
            assert answer.status_code == 200
            events = [line.removeprefix("data: ") for line in answer.iter_lines() if line]
        pieces = [json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1]]
        report = _shadow_report(client, "streamed@production -> 2", lambda r: r["compared"] >= 1)
    pair = report["pairs"][0]
    assert pair["primary"] == "".join(pieces)  # the stream's whole text, as the caller read it
    assert pair["candidate"].startswith("llama2:13b")
    assert pair["exact_match"] is False
    assert report["failed"] == report["dropped"] == 0
