"""The ceiling: a bare FastAPI route that parses and returns small pydantic models."""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import BaseModel


class Message(BaseModel):
    role: str
    content: str


class ChatRequest(BaseModel):
    model: str
    messages: list[Message]
    stream: bool = False


class ChatResponse(BaseModel):
    model: str
    message: Message
    done: bool


app = FastAPI()


@app.post("/api/chat")
async def chat(body: ChatRequest) -> ChatResponse:
    return ChatResponse(
        model=body.model, message=Message(role="assistant", content="Hello!"), done=True
    )
