"""A stand-in Ollama server: a test double that follows Ollama's published API.

It follows ``docs/api.md`` of ollama/ollama: the same routes, request and response fields,
NDJSON streaming by default (``"stream": false`` for one object), durations in nanoseconds,
``{"error": "..."}`` bodies with Ollama's status codes (404 for an unknown model, 400 for a
bad request), and Ollama's name rule (``llama2`` means ``llama2:latest``). It counts every
request it gets so tests can assert what reached the engine.

Text is deterministic: the reply to a prompt is ``"<model> heard: <prompt words>"`` cut to
``num_predict`` tokens (one token per word), so tests can check what the engine received.
It is never shipped: only tests import it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

VERSION = "0.12.6"


def canonical(name: str) -> str:
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


@dataclass
class StandInModel:
    name: str
    family: str = "llama"
    embedding_only: bool = False
    size: int = 3_825_819_519
    #: What /api/show answers (Ollama 0.6+); a completion model says "completion" at least.
    capabilities: tuple[str, ...] = ("completion", "tools")
    #: When set, generating with it fails as Ollama does when a model cannot run (500).
    fails_with: str | None = None
    #: Seconds this model takes before answering a generation (beside the server's own).
    delay_s: float = 0.0

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.name.encode()).hexdigest()

    def details(self) -> dict[str, Any]:
        return {
            "parent_model": "",
            "format": "gguf",
            "family": self.family,
            "families": [self.family],
            "parameter_size": "7B",
            "quantization_level": "Q4_0",
        }


@dataclass
class OllamaStandIn:
    """The app plus the knobs tests turn: models present, delays, failures."""

    models: dict[str, StandInModel] = field(default_factory=dict)
    pullable: set[str] = field(default_factory=set)
    counts: Counter[str] = field(default_factory=Counter)
    received: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    #: seconds to wait before answering any generate/chat/embed request
    delay_s: float = 0.0
    #: seconds between streamed tokens
    token_delay_s: float = 0.0
    #: when set, a streamed generation fails with this error after the first token
    fail_mid_stream: str | None = None
    #: when set, the connection is cut after the first streamed token (a crash, not an error)
    abort_mid_stream: bool = False
    streams_closed_early: int = 0
    embedding_dims: int = 8
    #: When set, /api/show answers this status (a proxy or server whose show fails).
    show_error: int | None = None
    #: when set, every POST is answered with this (status, error message, headers)
    answer: tuple[int, str, dict[str, str]] | None = None

    def add(self, name: str, **kwargs: Any) -> StandInModel:
        model = StandInModel(canonical(name), **kwargs)
        self.models[model.name] = model
        return model

    def remove(self, name: str) -> None:
        self.models.pop(canonical(name), None)

    def app(self) -> Starlette:
        routes = [
            Route("/", self._root, methods=["GET", "HEAD"]),
            Route("/api/version", self._version, methods=["GET"]),
            Route("/api/tags", self._tags, methods=["GET"]),
            Route("/api/ps", self._ps, methods=["GET"]),
            Route("/api/show", self._show, methods=["POST"]),
            Route("/api/generate", self._generate, methods=["POST"]),
            Route("/api/chat", self._chat, methods=["POST"]),
            Route("/api/embed", self._embed, methods=["POST"]),
            Route("/api/pull", self._pull, methods=["POST"]),
        ]
        return Starlette(routes=routes)

    # -- routes -----------------------------------------------------------------------

    async def _root(self, request: Request) -> Response:
        self.counts["GET /"] += 1
        return Response("Ollama is running", media_type="text/plain")

    async def _version(self, request: Request) -> Response:
        self.counts["GET /api/version"] += 1
        return JSONResponse({"version": VERSION})

    async def _tags(self, request: Request) -> Response:
        self.counts["GET /api/tags"] += 1
        return JSONResponse(
            {
                "models": [
                    {
                        "name": m.name,
                        "model": m.name,
                        "modified_at": "2024-06-04T14:38:31.83753-07:00",
                        "size": m.size,
                        "digest": m.digest,
                        "details": m.details(),
                    }
                    for m in self.models.values()
                ]
            }
        )

    async def _ps(self, request: Request) -> Response:
        self.counts["GET /api/ps"] += 1
        return JSONResponse({"models": []})

    async def _show(self, request: Request) -> Response:
        body, error = await self._body(request, "POST /api/show")
        if error is not None:
            return error
        model = self.models.get(canonical(str(body.get("model", ""))))
        if model is None:
            return _error(404, f"model '{body.get('model')}' not found")
        if self.show_error is not None:
            return _error(self.show_error, "show is not available here")
        return JSONResponse(
            {
                "modelfile": f"FROM {model.name}",
                "parameters": "",
                "template": "{{ .Prompt }}",
                "details": model.details(),
                "model_info": {
                    "general.architecture": model.family,
                    f"{model.family}.context_length": 4096,
                },
                "capabilities": ["embedding"] if model.embedding_only else list(model.capabilities),
            }
        )

    async def _generate(self, request: Request) -> Response:
        body, error = await self._body(request, "POST /api/generate")
        if error is not None:
            return error
        model, error = self._model_for(body, "generate")
        if error is not None:
            return error
        assert model is not None
        prompt = str(body.get("prompt") or "")
        images = body.get("images") or []
        if not prompt and not images:  # docs: an empty prompt loads (keep_alive 0: unloads)
            return self._load_or_unload(body, model, chat=False)
        words = prompt.split() + [f"<image:{len(str(i))}>" for i in images]
        return await self._reply(body, model, words, chat=False)

    async def _chat(self, request: Request) -> Response:
        body, error = await self._body(request, "POST /api/chat")
        if error is not None:
            return error
        model, error = self._model_for(body, "chat")
        if error is not None:
            return error
        assert model is not None
        messages = body.get("messages") or []
        if not messages:  # docs: no messages loads (keep_alive 0: unloads)
            return self._load_or_unload(body, model, chat=True)
        tools = body.get("tools") or []
        if tools and messages[-1].get("role") != "tool":
            return self._call(body, model, tools[0]["function"])
        last = messages[-1].get("content") or ""  # Ollama's content is optional (tool calls)
        return await self._reply(body, model, str(last).split(), chat=True)

    def _call(
        self, body: dict[str, Any], model: StandInModel, function: dict[str, Any]
    ) -> Response:
        """Asked with tools (and not answering a tool's result): call the first one, each
        required argument "x", as Ollama sends a call: in a message of its own."""
        required = (function.get("parameters") or {}).get("required") or []
        call = {"function": {"name": function["name"], "arguments": dict.fromkeys(required, "x")}}
        frame = self._frame(model, "", True, False)
        frame["message"]["tool_calls"] = [call]
        final = self._frame(model, "", True, True, "stop", 1, 1)
        if body.get("stream") is False:
            final["message"]["tool_calls"] = [call]
            return JSONResponse(final)
        lines = (json.dumps(frame) + "\n" + json.dumps(final) + "\n").encode()
        return Response(lines, media_type="application/x-ndjson")

    async def _embed(self, request: Request) -> Response:
        body, error = await self._body(request, "POST /api/embed")
        if error is not None:
            return error
        model = self.models.get(canonical(str(body.get("model") or "")))
        if not body.get("model"):
            return _error(400, "model is required")
        if model is None:
            return _error(404, f'model "{body["model"]}" not found, try pulling it first')
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
        await asyncio.sleep(self.delay_s)
        return JSONResponse(
            {
                "model": model.name,
                "embeddings": [self._vector(text) for text in texts],
                "total_duration": 14_143_917,
                "load_duration": 1_019_500,
                "prompt_eval_count": sum(len(text.split()) for text in texts),
            }
        )

    async def _pull(self, request: Request) -> Response:
        body, error = await self._body(request, "POST /api/pull")
        if error is not None:
            return error
        name = canonical(str(body.get("model") or ""))
        if name not in {canonical(p) for p in self.pullable}:
            return _error(500, "pull model manifest: file does not exist")
        self.add(name)
        statuses = [{"status": "pulling manifest"}, {"status": "success"}]
        if body.get("stream") is False:
            return JSONResponse(statuses[-1])
        return Response(
            "".join(json.dumps(s) + "\n" for s in statuses), media_type="application/x-ndjson"
        )

    # -- helpers ----------------------------------------------------------------------

    async def _body(self, request: Request, key: str) -> tuple[dict[str, Any], Response | None]:
        self.counts[key] += 1
        try:
            body = json.loads(await request.body() or b"{}")
        except json.JSONDecodeError as exc:
            return {}, _error(400, f"invalid character in request body: {exc.msg}")
        if not isinstance(body, dict):
            return {}, _error(400, "request body must be a JSON object")
        self.received.append((key, body))
        if self.answer is not None:
            status, message, headers = self.answer
            return body, JSONResponse({"error": message}, status_code=status, headers=headers)
        return body, None

    def _model_for(
        self, body: dict[str, Any], action: str
    ) -> tuple[StandInModel | None, Response | None]:
        name = body.get("model")
        if not name:
            return None, _error(400, "model is required")
        model = self.models.get(canonical(str(name)))
        if model is None:
            return None, _error(404, f'model "{name}" not found, try pulling it first')
        if model.embedding_only:
            return None, _error(400, f'"{name}" does not support {action}')
        if model.fails_with is not None:
            return None, _error(500, model.fails_with)
        return model, None

    def _load_or_unload(self, body: dict[str, Any], model: StandInModel, *, chat: bool) -> Response:
        unload = body.get("keep_alive") in (0, "0", "0s")
        self.counts["unload" if unload else "load"] += 1
        frame = {"model": model.name, "created_at": _now()}
        frame.update(
            {"message": {"role": "assistant", "content": ""}} if chat else {"response": ""}
        )
        frame.update({"done_reason": "unload" if unload else "load", "done": True})
        return JSONResponse(frame)

    async def _reply(
        self, body: dict[str, Any], model: StandInModel, words: list[str], *, chat: bool
    ) -> Response:
        options = body.get("options") or {}
        limit = options.get("num_predict")
        tokens = [f"{model.name}", "heard:", *words]
        done_reason = "stop"
        if isinstance(limit, int) and 0 <= limit < len(tokens):
            tokens, done_reason = tokens[:limit], "length"
        prompt_count = len(words)
        await asyncio.sleep(self.delay_s + model.delay_s)
        if body.get("stream") is False:
            text = " ".join(tokens)
            return JSONResponse(
                self._frame(model, text, chat, True, done_reason, prompt_count, len(tokens))
            )
        return StreamingResponse(
            self._stream(model, tokens, chat, done_reason, prompt_count),
            media_type="application/x-ndjson",
        )

    async def _stream(
        self,
        model: StandInModel,
        tokens: list[str],
        chat: bool,
        done_reason: str,
        prompt_count: int,
    ) -> AsyncIterator[bytes]:
        finished = False
        try:
            for index, token in enumerate(tokens):
                piece = token if index == 0 else f" {token}"
                yield (json.dumps(self._frame(model, piece, chat, False)) + "\n").encode()
                if self.abort_mid_stream:
                    raise ConnectionAbortedError("the stand-in crashed mid-stream")
                if self.fail_mid_stream is not None:
                    yield (json.dumps({"error": self.fail_mid_stream}) + "\n").encode()
                    finished = True
                    return
                await asyncio.sleep(self.token_delay_s)
            final = self._frame(model, "", chat, True, done_reason, prompt_count, len(tokens))
            yield (json.dumps(final) + "\n").encode()
            finished = True
        finally:
            if not finished:
                self.streams_closed_early += 1

    def _frame(
        self,
        model: StandInModel,
        text: str,
        chat: bool,
        done: bool,
        done_reason: str | None = None,
        prompt_count: int = 0,
        eval_count: int = 0,
    ) -> dict[str, Any]:
        frame: dict[str, Any] = {"model": model.name, "created_at": _now()}
        if chat:
            frame["message"] = {"role": "assistant", "content": text}
        else:
            frame["response"] = text
        frame["done"] = done
        if done:
            frame.update(
                {
                    "done_reason": done_reason,
                    "total_duration": 10_706_818_083,
                    "load_duration": 6_338_219_291,
                    "prompt_eval_count": prompt_count,
                    "prompt_eval_duration": 130_079_000,
                    "eval_count": eval_count,
                    "eval_duration": 4_232_710_000,
                }
            )
            if not chat:
                frame["context"] = [1, 2, 3]
        return frame

    def _vector(self, text: str) -> list[float]:
        digest = hashlib.sha256(text.encode()).digest()
        raw = [b / 255.0 - 0.5 for b in digest[: self.embedding_dims]]
        norm = math.sqrt(sum(x * x for x in raw)) or 1.0
        return [x / norm for x in raw]


def _error(status: int, message: str) -> Response:
    return JSONResponse({"error": message}, status_code=status)


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")
