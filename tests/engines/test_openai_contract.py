"""The openai engine over aiml's HTTP layer, against a small OpenAI-compatible stand-in:
answers, streams, and the error contract of aiml.engines.base."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from aiml.engines.remote.openai import OpenAIEngine
from aiml.errors import (
    AimlError,
    EngineError,
    EngineOverloaded,
    EngineRejected,
    EngineTimeout,
    EngineUnavailable,
    ModelNotFound,
)
from aiml.types import ChatMessage, ResolvedModel, SamplingParams, Source
from tests.fakes.servers import ServerThread

HI = [ChatMessage("user", "hi")]


@dataclass
class StandIn:
    #: when set, every request is answered with this (status, error message, headers)
    answer: tuple[int, str, dict[str, str]] | None = None
    received: list[dict[str, Any]] = field(default_factory=list)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/embeddings", self._embeddings, methods=["POST"]),
            ]
        )

    def _refusal(self) -> Response | None:
        if self.answer is None:
            return None
        status, message, headers = self.answer
        body = {"error": {"message": message, "type": "invalid_request_error", "code": None}}
        return JSONResponse(body, status_code=status, headers=headers)

    async def _models(self, request: Request) -> Response:
        return self._refusal() or JSONResponse(
            {"object": "list", "data": [{"id": "m", "object": "model", "owned_by": "x"}]}
        )

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        self.received.append(body)
        if (refusal := self._refusal()) is not None:
            return refusal
        if body.get("stream"):
            return StreamingResponse(_events(), media_type="text/event-stream")
        return JSONResponse(
            {
                "id": "c",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "hello there"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4},
            }
        )

    async def _embeddings(self, request: Request) -> Response:
        return self._refusal() or JSONResponse(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.5, 0.5]}],
                "model": "m",
                "usage": {"prompt_tokens": 1, "total_tokens": 1},
            }
        )


async def _events() -> AsyncIterator[bytes]:
    for piece in ("hello", " there"):
        chunk = {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "m",
            "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
        }
        yield f"data: {json.dumps(chunk)}\n\n".encode()
    yield b"data: [DONE]\n\n"


@pytest.fixture
def stand_in() -> Iterator[tuple[StandIn, str]]:
    state = StandIn()
    with ServerThread(state.app(), lifespan="off") as server:
        yield state, f"{server.url}/v1"


@pytest.fixture
async def engine(stand_in: tuple[StandIn, str]) -> AsyncIterator[OpenAIEngine]:
    engine = OpenAIEngine(stand_in[1], api_key="k", timeout_s=2.0, connect_timeout_s=1.0)
    yield engine
    await engine.aclose()


def model(name: str = "m") -> ResolvedModel:
    return ResolvedModel(engine="openai", engine_model=name, source=Source.DIRECT)


async def test_answers_and_streams(engine: OpenAIEngine, stand_in: tuple[StandIn, str]) -> None:
    assert await engine.find_model("m") == "m"
    reply = await engine.chat(model(), HI, SamplingParams(max_tokens=5, top_k=3))
    assert (reply.text, reply.completion_tokens) == ("hello there", 2)
    assert stand_in[0].received[-1]["top_k"] == 3
    chunks = [c async for c in engine.stream_chat(model(), HI, SamplingParams())]
    assert "".join(c.text for c in chunks) == "hello there"
    assert chunks[-1].done
    vectors = await engine.embed(model(), ["a"])
    assert vectors.vectors == [[0.5, 0.5]]


@pytest.mark.parametrize(
    ("status", "headers", "expected", "aiml_status", "retry_after"),
    [
        (400, {}, EngineRejected, 400, None),
        (422, {}, EngineRejected, 422, None),
        (404, {}, ModelNotFound, 404, None),
        (429, {"Retry-After": "7"}, EngineOverloaded, 429, 7),
        (503, {}, EngineUnavailable, 503, None),
        (504, {}, EngineTimeout, 504, None),
        (500, {}, EngineError, 502, None),
        (403, {}, EngineError, 502, None),
    ],
)
async def test_upstream_statuses_by_the_engine_contract(
    engine: OpenAIEngine,
    stand_in: tuple[StandIn, str],
    status: int,
    headers: dict[str, str],
    expected: type[AimlError],
    aiml_status: int,
    retry_after: int | None,
) -> None:
    stand_in[0].answer = (status, "maximum context length is 2048 tokens", headers)
    for call in (
        engine.chat(model(), HI, SamplingParams()),
        anext(engine.stream_chat(model(), HI, SamplingParams())),
        engine.embed(model(), ["a"]),
    ):
        with pytest.raises(expected) as raised:
            await call
        assert type(raised.value) is expected
        assert (raised.value.status_code, raised.value.retry_after) == (aiml_status, retry_after)
        assert "maximum context length is 2048 tokens" in raised.value.message


async def test_an_unreachable_server_is_unavailable() -> None:
    down = OpenAIEngine("http://127.0.0.1:9/v1", api_key=None, timeout_s=1, connect_timeout_s=1)
    with pytest.raises(EngineUnavailable):
        await down.chat(model(), HI, SamplingParams())
    await down.aclose()


async def test_a_python_error_in_the_engine_is_not_an_engine_error(
    engine: OpenAIEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiml's own bug stays a bug (500), never a 502 that blames the engine."""

    async def broken(**kwargs: object) -> object:
        raise KeyError("a bug in aiml")

    monkeypatch.setattr(engine._client.chat.completions, "create", broken)
    with pytest.raises(KeyError):
        await engine.chat(model(), HI, SamplingParams())
