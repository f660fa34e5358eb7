"""Several Ollama hosts: calls spread over the healthy ones, and move off a host that is down."""

from __future__ import annotations

from collections.abc import Callable

from tests.conftest import Registry, RunningAiml, RunningOllama, standard_stand_in
from tests.fakes.servers import ServerThread

CHAT = {"model": "llama2-7b-chat", "stream": False,
        "messages": [{"role": "user", "content": "hello"}]}  # fmt: skip


def chats(state: object) -> int:
    return sum(n for key, n in state.counts.items() if "chat" in key)  # type: ignore[attr-defined]


def test_two_hosts_share_the_calls_and_a_dead_one_is_skipped(
    start_aiml: Callable[..., RunningAiml], registry: Registry, ollama: RunningOllama
) -> None:
    registry.register("llama2-7b-chat", "llama2:7b", task="chat")
    other = standard_stand_in()
    second = ServerThread(other.app(), lifespan="off").start()
    try:
        aiml = start_aiml(ollama_host=f"{ollama.url},{second.url}")
        with aiml.client() as client:
            for _ in range(10):
                assert client.post("/api/chat", json=CHAT).status_code == 200
            assert chats(ollama.state) >= 3 and chats(other) >= 3  # both hosts served
            second.stop()
            before = chats(ollama.state)
            for _ in range(10):  # the first one finds the host down and moves on, unseen
                answer = client.post("/api/chat", json=CHAT)
                assert answer.status_code == 200, answer.text
            assert chats(ollama.state) - before == 10
            assert client.get("/health/ready").status_code == 200  # one host is enough
            streamed = client.post("/api/chat", json={**CHAT, "stream": True})
            assert streamed.status_code == 200 and '"done":true' in streamed.text.replace(" ", "")
    finally:
        second.stop()
