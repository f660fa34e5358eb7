"""Requests whose client hung up are cancelled, streaming or not.

Starlette notices a disconnect only while a ``StreamingResponse`` is sending; a plain
endpoint keeps running after its client left (measured: a non-streaming generation still
in flight 39 s after a 1 s client timeout, holding its model and admission slot). Here,
once the request's body has been read, the only message the server can still deliver is
``http.disconnect``; a watcher waits for it and cancels the request's task, which stops the
engine at its next token and gives every slot back through the usual ``finally`` paths.

The watcher owns the server's ``receive`` after the body: the app's own later calls (the
streaming response's disconnect listener) are answered from the watcher's event, so the
message is never consumed twice.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CancelOnDisconnect"]

_DISCONNECT: Message = {"type": "http.disconnect"}
_NO_BODY = frozenset({"GET", "HEAD"})


class CancelOnDisconnect:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        task = asyncio.current_task()
        assert task is not None
        body_read = asyncio.Event()
        gone = asyncio.Event()
        pending: list[Message] = []  # a bodiless request's (empty) body, read by the watcher
        state: dict[str, Any] = {"complete": False, "hung_up": False}

        async def app_receive() -> Message:
            if pending:
                return pending.pop()
            if body_read.is_set():
                await gone.wait()
                return _DISCONNECT
            message = await receive()
            if message["type"] == "http.disconnect":
                gone.set()
            elif not message.get("more_body", False):
                body_read.set()
            return message

        async def app_send(message: Message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                state["complete"] = True
            await send(message)

        async def watch() -> None:
            if scope["method"] in _NO_BODY:
                first = await receive()
                if first["type"] == "http.request":
                    pending.append(first)
                    body_read.set()
                else:
                    gone.set()
            await body_read.wait()
            if not gone.is_set():
                await receive()  # returns on a disconnect, or once the response is complete
            if not state["complete"]:
                gone.set()
                state["hung_up"] = True
                task.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            await self.app(scope, app_receive, app_send)
        except asyncio.CancelledError:
            if state["hung_up"] and task.uncancel() == 0:
                return  # nobody is listening: nothing to answer, nothing more to do
            raise
        finally:
            watcher.cancel()
