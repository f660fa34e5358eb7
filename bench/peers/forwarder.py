"""The floor a naive gateway reaches: FastAPI forwarding through one pooled httpx client."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response

BACKEND = os.environ.get("BACKEND_URL", "http://127.0.0.1:11434")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    app.state.client = httpx.AsyncClient(base_url=BACKEND, limits=limits, timeout=30)
    yield
    await app.state.client.aclose()


app = FastAPI(lifespan=lifespan)


@app.post("/api/chat")
async def chat(request: Request) -> Response:
    upstream = await request.app.state.client.post("/api/chat", content=await request.body())
    return Response(
        upstream.content, status_code=upstream.status_code, media_type="application/json"
    )
