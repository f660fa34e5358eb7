"""``/v1/responses``: OpenAI's Responses API over every chat model aiml serves.

A request is a chat turn: ``instructions`` as the system turn, the stored conversation of
``previous_response_id`` (the earlier input and output items, not its instructions, as
OpenAI does), then the new input. Answers are ``message`` and ``function_call`` output
items; streams are the typed server-sent events (``response.created`` ...
``response.completed``). With ``store`` (the default) the response and its conversation are
kept in aiml's home for ``AIML_RESPONSES_RETENTION_S``, owned by the key that made it: any
other key (but an admin key) gets 404 for it, as if it did not exist.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter
from starlette.responses import Response

from aiml.errors import AimlError, EngineError, InvalidRequest, NotFound
from aiml.inference.manager import StreamOutcome, TaskCall
from aiml.inference.response_store import EVERY_OWNER, Viewer
from aiml.inference.targets import openai_target
from aiml.inference.tasks.chat import ChatInput
from aiml.observability.context import stick_to_user
from aiml.services import Services
from aiml.types import ChatMessage, Generation

from ..auth import Caller
from ..deps import CallerDep, ServicesDep
from ..responses import JSONResponse
from ..responses_schemas import ResponsesRequest, messages_of
from ..streaming import SSE, streaming_response
from ..threaded_json import ThreadedJsonRoute

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["openai"], route_class=ThreadedJsonRoute)


@router.post("/responses")
async def create_response(
    body: ResponsesRequest, services: ServicesDep, caller: CallerDep
) -> Response:
    stick_to_user(body.safety_identifier or body.user)
    history: list[dict[str, Any]] = []
    if body.previous_response_id:
        stored = await services.responses.get(body.previous_response_id, _viewer(caller))
        if stored is None:
            raise NotFound(
                f"no stored response {body.previous_response_id!r}", param="previous_response_id"
            )
        history = stored["conversation"]
    conversation = [*history, *body.items()]
    if not conversation:
        raise InvalidRequest("input is empty and there is no previous response", param="input")
    messages = messages_of(conversation)
    if body.instructions:
        messages.insert(0, ChatMessage("system", body.instructions))
    params = body.params()  # validated before the model is looked up
    call = TaskCall(
        "chat",
        lambda: openai_target(services.router, body.model),
        ChatInput(tuple(messages), params),
    )
    reply = _Reply(body, services, conversation, owner=caller.owner)
    if body.stream:
        return streaming_response(reply.events(await services.manager.open(call)), SSE)
    outcome = await services.manager.run(call)
    assert outcome.generation is not None
    return JSONResponse(await reply.finish(outcome.generation))


@router.get("/responses/{response_id}")
async def get_response(response_id: str, services: ServicesDep, caller: CallerDep) -> JSONResponse:
    stored = await services.responses.get(response_id, _viewer(caller))
    if stored is None:
        raise NotFound(f"no stored response {response_id!r}", param="response_id")
    return JSONResponse(stored["response"])


@router.delete("/responses/{response_id}")
async def delete_response(
    response_id: str, services: ServicesDep, caller: CallerDep
) -> JSONResponse:
    if not await services.responses.delete(response_id, _viewer(caller)):
        raise NotFound(f"no stored response {response_id!r}", param="response_id")
    return JSONResponse({"id": response_id, "object": "response", "deleted": True})


def _viewer(caller: Caller) -> Viewer:
    """The stored responses a caller sees: its key's own; an admin's (or without keys), all."""
    return EVERY_OWNER if caller.admin else Viewer(owner=caller.owner)


class _Reply:
    """One response object, whole or as its stream of events, stored when it is done."""

    def __init__(
        self,
        body: ResponsesRequest,
        services: Services,
        conversation: list[dict[str, Any]],
        *,
        owner: str | None,
    ) -> None:
        self.body = body
        self.services = services
        self.conversation = conversation
        self.owner = owner
        self.id = f"resp_{uuid.uuid4().hex}"
        self.message_id = f"msg_{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.sequence = 0

    def snapshot(self, status: str, output: list[dict[str, Any]]) -> dict[str, Any]:
        body = self.body
        return {
            "id": self.id, "object": "response", "created_at": self.created, "status": status,
            "model": body.model, "output": output, "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "previous_response_id": body.previous_response_id,
            "temperature": body.temperature, "top_p": body.top_p,
            "text": {"format": (body.text.format if body.text else None) or {"type": "text"}},
            "tools": body.tools or [], "tool_choice": body.tool_choice or "auto",
            "parallel_tool_calls": body.parallel_tool_calls is not False,
            "metadata": body.metadata or {}, "store": body.store, "error": None,
            "incomplete_details": None, "usage": None,
        }  # fmt: skip

    async def finish(self, generation: Generation) -> dict[str, Any]:
        output = (
            self.message(generation.text) if generation.text or not generation.tool_calls else []
        )
        output += [self.function_call(c.id, c.name, c.arguments) for c in generation.tool_calls]
        cut = generation.finish_reason == "length"
        response = self.snapshot("incomplete" if cut else "completed", output)
        if cut:
            response["incomplete_details"] = {"reason": "max_output_tokens"}
        prompt, made = generation.prompt_tokens or 0, generation.completion_tokens or 0
        response["usage"] = {
            "input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": made, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + made,
        }  # fmt: skip
        if self.body.store:
            record = {"response": response, "conversation": [*self.conversation, *output]}
            await self.services.responses.save(self.id, record, owner=self.owner)
        return response

    def message(self, text: str, status: str = "completed") -> list[dict[str, Any]]:
        part = {"type": "output_text", "text": text, "annotations": []}
        return [{"type": "message", "id": self.message_id, "status": status, "role": "assistant",
                 "content": [part] if status == "completed" else []}]  # fmt: skip

    @staticmethod
    def function_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
        return {"type": "function_call", "id": f"fc_{call_id}", "call_id": call_id,
                "name": name, "arguments": arguments, "status": "completed"}  # fmt: skip

    def event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"

    async def events(self, outcome: StreamOutcome) -> AsyncIterator[bytes]:
        yield self.event("response.created", response=self.snapshot("in_progress", []))
        yield self.event("response.in_progress", response=self.snapshot("in_progress", []))
        ids = {"item_id": self.message_id, "output_index": 0, "content_index": 0}
        text: list[str] = []
        try:
            async for chunk in outcome.chunks():
                if not chunk.text:
                    continue
                if not text:  # the message item opens with its first text
                    yield self.event("response.output_item.added", output_index=0,
                                     item=self.message("", "in_progress")[0])  # fmt: skip
                    part = {"type": "output_text", "text": "", "annotations": []}
                    yield self.event("response.content_part.added", part=part, **ids)
                text.append(chunk.text)
                yield self.event("response.output_text.delta", delta=chunk.text, logprobs=[], **ids)
            final = outcome.final
            if final is None:
                raise EngineError("the engine ended the stream without a result")
            response = await self.finish(final)
        except AimlError as exc:  # the status line is long gone: say it in the stream
            yield self.event("error", code=exc.code, message=exc.message, param=exc.param)
            return
        for index, item in enumerate(response["output"]):
            if item["type"] == "message":
                whole = item["content"][0]
                if not text:
                    yield self.event("response.output_item.added", output_index=index,
                                     item=self.message("", "in_progress")[0])  # fmt: skip
                    yield self.event(
                        "response.content_part.added", part={**whole, "text": ""}, **ids
                    )
                yield self.event(
                    "response.output_text.done", text=whole["text"], logprobs=[], **ids
                )
                yield self.event("response.content_part.done", part=whole, **ids)
            else:
                opened = {**item, "arguments": "", "status": "in_progress"}
                yield self.event("response.output_item.added", output_index=index, item=opened)
                yield self.event("response.function_call_arguments.delta", item_id=item["id"],
                                 output_index=index, delta=item["arguments"])  # fmt: skip
                yield self.event("response.function_call_arguments.done", item_id=item["id"],
                                 output_index=index, arguments=item["arguments"])  # fmt: skip
            yield self.event("response.output_item.done", output_index=index, item=item)
        done = "response.completed" if response["status"] == "completed" else "response.incomplete"
        yield self.event(done, response=response)
