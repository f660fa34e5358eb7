"""GGUF models in this process, on llama-cpp-python.

A llama.cpp context is not thread-safe, so each loaded model serves one generation at a
time: requests queue on a FIFO lock per model (fair: first come, first served) and run in a
worker thread, token by token. A client that goes away stops its generation at the next
token, and the model's slot is released only when the worker has really left it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from aiml.errors import InvalidRequest, ModelNotServable
from aiml.registry.artifacts import safe_relpath
from aiml.types import (
    ChatMessage,
    Embeddings,
    Generation,
    GenerationChunk,
    RegistryVersion,
    ResolvedModel,
    SamplingParams,
    Task,
)

from .local import LocalEngine
from .pool import Loaded

__all__ = ["GGUF_TAG", "LlamaCppEngine"]

#: The version tag naming the model's .gguf file among its artifacts.
GGUF_TAG = "gguf_file"
_OVERHEAD = 32 << 20


class LlamaCppEngine(LocalEngine):
    """Registered GGUF files, generated with llama.cpp."""

    name = "llamacpp"
    tasks = frozenset({Task.TEXT_GENERATION, Task.CHAT, Task.EMBEDDINGS})

    def __init__(
        self,
        artifacts: Any,
        pool: Any,
        *,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        default_max_tokens: int = 512,
    ) -> None:
        super().__init__(artifacts, pool)
        self._n_ctx = n_ctx
        self._n_threads = n_threads or os.cpu_count() or 1
        self._default_max_tokens = default_max_tokens

    def check_version(self, version: RegistryVersion) -> None:
        gguf = version.tag(GGUF_TAG)
        if not gguf or "/" in gguf or not gguf.endswith(".gguf"):
            raise ModelNotServable(
                f"registered model {version.name!r} version {version.version} needs a "
                f"{GGUF_TAG!r} tag naming its .gguf file (register it with `aiml register`)",
                param="model_name",
            )
        safe_relpath(gguf)

    def estimate_bytes(self, model: ResolvedModel) -> int:
        size = self.tagged_file(model, GGUF_TAG).stat().st_size
        return int(size * 1.25) + _OVERHEAD  # weights + KV cache and compute buffers

    def load(self, model: ResolvedModel) -> Loaded:
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        path = self.tagged_file(model, GGUF_TAG)
        embedding = model.declared_task == Task.EMBEDDINGS
        llm = Llama(
            model_path=str(path),
            n_ctx=self._n_ctx,
            n_threads=self._n_threads,
            embedding=embedding,
            verbose=False,
        )
        formatter = None
        template = llm.metadata.get("tokenizer.chat_template")
        if template:
            # The model's own chat template, as llama-cpp-python builds it, kept here so the
            # prompt is ours to count (usage) and a model without a template refuses chat
            # instead of falling back to a guessed format.
            eos, bos = llm.token_eos(), llm.token_bos()
            formatter = Jinja2ChatFormatter(
                template=template,
                eos_token=_token_text(llm, eos),
                bos_token=_token_text(llm, bos),
                stop_token_ids=[eos],
            )
        handle = _Llama(llm, formatter)
        return Loaded(handle=handle, size_bytes=self.estimate_bytes(model), close=llm.close)

    async def stream_generate(
        self,
        model: ResolvedModel,
        prompt: str,
        params: SamplingParams,
        *,
        images: Sequence[bytes] = (),
    ) -> AsyncIterator[GenerationChunk]:
        if images:
            raise ModelNotServable("llamacpp models here take no images", param="task")

        def render(handle: _Llama) -> _Prompt:
            return _Prompt(handle.llm.tokenize(prompt.encode()), [], None)

        async for chunk in self._completion(model, render, params):
            yield chunk

    async def stream_chat(
        self, model: ResolvedModel, messages: Sequence[ChatMessage], params: SamplingParams
    ) -> AsyncIterator[GenerationChunk]:
        if any(message.images for message in messages):
            raise ModelNotServable("llamacpp models here take no images", param="messages")
        payload = [{"role": m.role, "content": m.content} for m in messages]

        def render(handle: _Llama) -> _Prompt:
            if handle.formatter is None:
                raise ModelNotServable(
                    f"{model.engine_model} has no chat template in its GGUF; use text-generation",
                    param="task",
                )
            result = handle.formatter(messages=payload)
            tokens = handle.llm.tokenize(
                result.prompt.encode(), add_bos=not result.added_special, special=True
            )
            stop = result.stop if isinstance(result.stop, list) else [result.stop or ""]
            return _Prompt(tokens, [s for s in stop if s], result.stopping_criteria)

        async for chunk in self._completion(model, render, params):
            yield chunk

    async def embed(self, model: ResolvedModel, inputs: Sequence[str]) -> Embeddings:
        if model.declared_task != Task.EMBEDDINGS:
            raise ModelNotServable(
                f"{model.engine_model} is registered for {model.declared_task!r}; llama.cpp "
                "embeds only with models registered for 'embeddings'",
                param="task",
            )
        texts = list(inputs)

        def run(handle: _Llama) -> Iterator[Any]:
            yield handle.llm.create_embedding(texts)

        lease = await self.acquire(model)
        result = None
        async with contextlib.aclosing(self.exclusive(lease, run)) as items:
            async for item in items:
                result = item
        assert result is not None
        vectors = [_pooled(row["embedding"]) for row in result["data"]]
        return Embeddings(vectors=vectors, prompt_tokens=result["usage"]["prompt_tokens"])

    async def health(self) -> None:
        return None  # in-process: alive while the process is

    def _sampling(self, params: SamplingParams) -> dict[str, Any]:
        sampling: dict[str, Any] = {
            "max_tokens": params.max_tokens or self._default_max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": params.top_k,
            "stop": list(params.stop) or None,
            "seed": params.seed,
            "repeat_penalty": params.repeat_penalty,
        }
        return {key: value for key, value in sampling.items() if value is not None}

    async def _completion(
        self, model: ResolvedModel, render: Callable[[_Llama], _Prompt], params: SamplingParams
    ) -> AsyncIterator[GenerationChunk]:
        if model.declared_task == Task.EMBEDDINGS:
            raise ModelNotServable(f"{model.engine_model} is an embeddings model", param="task")
        lease = await self.acquire(model)
        sampling = self._sampling(params)
        prompt_tokens = 0

        def run(handle: _Llama) -> Iterator[tuple[str, str | None]]:
            nonlocal prompt_tokens
            prompt = render(handle)
            prompt_tokens = len(prompt.tokens)
            window = handle.llm.n_ctx()  # llama.cpp may round the configured size up
            if prompt_tokens >= window:
                raise InvalidRequest(
                    f"the prompt is {prompt_tokens} tokens; {model.engine_model}'s context "
                    f"holds {window} (AIML_LLAMACPP_N_CTX)",
                    param="data",
                )
            options = dict(sampling)
            options["stop"] = [*options.get("stop", []), *prompt.stop] or None
            stream = handle.llm.create_completion(
                prompt.tokens, stream=True, stopping_criteria=prompt.stopping, **options
            )
            for chunk in stream:
                choice = chunk["choices"][0]
                yield choice["text"], choice["finish_reason"]

        text: list[str] = []
        finish: str | None = None
        async with contextlib.aclosing(self.exclusive(lease, run)) as items:
            async for piece, reason in items:
                finish = reason or finish
                if piece:
                    text.append(piece)
                    yield GenerationChunk(text=piece)
        final = Generation(
            text="".join(text),
            finish_reason=finish,
            prompt_tokens=prompt_tokens,
            completion_tokens=len(text),
        )
        yield GenerationChunk(text="", done=True, final=final)


@dataclass(frozen=True, slots=True)
class _Llama:
    llm: Any
    formatter: Any  # the model's chat template, or None when the GGUF has none


@dataclass(frozen=True, slots=True)
class _Prompt:
    tokens: list[int]
    stop: list[str]
    stopping: Any


def _token_text(llm: Any, token: int) -> str:
    return llm.detokenize([token], special=True).decode(errors="ignore") if token != -1 else ""


def _pooled(embedding: Any) -> list[float]:
    """llama.cpp returns one vector per token when the model declares no pooling: mean them."""
    if embedding and isinstance(embedding[0], list):
        count = len(embedding)
        return [sum(column) / count for column in zip(*embedding, strict=True)]
    return [float(x) for x in embedding]
