"""An Ollama-API backend that answers at once: the common engine of every path measured.

It also answers ``/v1/chat/completions`` so that the official ``openai`` client has a
baseline of its own: a path measured with one client is compared with that client calling
the backend directly, never with another client's overhead.
"""

from __future__ import annotations

import time

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

MODELS = ["llama2:7b"]


def _json(payload: object) -> Response:
    return Response(orjson.dumps(payload), media_type="application/json")


async def chat(request: Request) -> Response:
    body = orjson.loads(await request.body())
    return _json(
        {
            "model": body["model"],
            "created_at": "2024-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
            "done": True,
            "done_reason": "stop",
            "total_duration": 1000,
            "load_duration": 10,
            "prompt_eval_count": 8,
            "prompt_eval_duration": 100,
            "eval_count": 9,
            "eval_duration": 800,
        }
    )


async def openai_chat(request: Request) -> Response:
    body = orjson.loads(await request.body())
    return _json(
        {
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "created": 1704067200,
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": "Hello! How can I help you today?",
                    },
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 8, "completion_tokens": 9, "total_tokens": 17},
        }
    )


async def tags(request: Request) -> Response:
    return _json(
        {"models": [{"name": m, "model": m, "modified_at": "2024-01-01T00:00:00Z", "size": 1,
                     "digest": "0" * 64, "details": {}} for m in MODELS]}
    )  # fmt: skip


async def show(request: Request) -> Response:
    return _json(
        {"modelfile": "", "parameters": "", "template": "", "details": {}, "model_info": {}}
    )


async def openai_models(request: Request) -> Response:
    return _json(
        {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": 0, "owned_by": "stub"} for m in MODELS
            ],
        }
    )


async def version(request: Request) -> Response:
    return _json({"version": "0.12.6", "time": time.time()})


app = Starlette(
    routes=[
        Route("/api/chat", chat, methods=["POST"]),
        Route("/v1/chat/completions", openai_chat, methods=["POST"]),
        Route("/v1/models", openai_models, methods=["GET"]),
        Route("/api/tags", tags, methods=["GET"]),
        Route("/api/show", show, methods=["POST"]),
        Route("/api/ps", lambda r: _json({"models": []}), methods=["GET"]),
        Route("/api/version", version, methods=["GET"]),
    ]
)
