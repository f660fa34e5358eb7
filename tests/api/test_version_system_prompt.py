"""A registry version's own system prompt (version tag ``aiml.system_prompt``) goes first
in a chat that has no system message, streamed or not, on every surface; a caller's own
system message is kept as it is; another version without the tag sends none."""

from __future__ import annotations

from collections.abc import Callable

from tests.conftest import Registry, RunningAiml, RunningOllama

CHAT = [{"role": "user", "content": "hi"}]


def _sent(ollama: RunningOllama) -> list[dict[str, str]]:
    key, body = ollama.state.received[-1]
    assert key.endswith("chat"), key
    return [{"role": m["role"], "content": m["content"]} for m in body["messages"]]


def test_a_versions_system_prompt_leads_a_chat_without_one(
    registry: Registry, ollama: RunningOllama, start_aiml: Callable[..., RunningAiml]
) -> None:
    registry.register("m", "llama2:7b", task="chat", alias="production",
                      tags={"aiml.system_prompt": "Answer in French."})  # fmt: skip
    registry.register("m", "llama2:7b", task="chat")
    aiml = start_aiml()
    system = {"role": "system", "content": "Answer in French."}
    with aiml.client() as client:
        for body in (
            {"model": "m@production", "messages": CHAT},
            {"model": "m@production", "messages": CHAT, "stream": True},
        ):
            with client.stream("POST", "/v1/chat/completions", json=body) as answer:
                answer.read()
                assert answer.status_code == 200
            assert _sent(ollama) == [system, *CHAT]
        ollama_surface = client.post(
            "/api/chat", json={"model": "m@production", "messages": CHAT, "stream": False}
        )
        assert ollama_surface.status_code == 200
        assert _sent(ollama) == [system, *CHAT]
        own = [{"role": "system", "content": "Be brief."}, *CHAT]
        for model, messages, sent in (("m@production", own, own), ("m/2", CHAT, CHAT)):
            body = {"model": model, "messages": messages}
            assert client.post("/v1/chat/completions", json=body).status_code == 200
            assert _sent(ollama) == sent
