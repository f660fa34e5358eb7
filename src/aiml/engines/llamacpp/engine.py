"""GGUF models in this process, on llama.cpp.

A loaded generative model runs all its requests through one :class:`BatchScheduler`
(continuous batching: up to ``AIML_LLAMACPP_PARALLEL`` sequences decoded together, new
requests joining at the next step, prompts read in chunks, prefixes reused). A client that
goes away frees its sequence at the next step. Embedding models run on llama-cpp-python's
``Llama`` one batch at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aiml.engines.details import gguf_details
from aiml.engines.local import LocalEngine
from aiml.engines.pool import Loaded
from aiml.engines.tool_shapes import openai_tools
from aiml.errors import EngineError, InvalidRequest, ModelLoadFailed, ModelNotServable
from aiml.registry.artifacts import safe_relpath
from aiml.types import (
    ChatMessage,
    Embeddings,
    Generation,
    GenerationChunk,
    ModelDetails,
    RegistryVersion,
    ResolvedModel,
    SamplingParams,
    Task,
)

from .json_grammar import parse_grammar
from .tool_calls import answer_of, template_messages, tool_format

__all__ = ["GGUF_TAG", "LlamaCppEngine"]

#: The version tag naming the model's .gguf file among its artifacts.
GGUF_TAG = "gguf_file"
_OVERHEAD = 96 << 20  # compute buffers (~50 MiB at a 512-token batch) and the rest


class LlamaCppEngine(LocalEngine):
    """Registered GGUF files, generated with llama.cpp, many sequences at once."""

    name = "llamacpp"
    tasks = frozenset({Task.TEXT_GENERATION, Task.CHAT, Task.EMBEDDINGS})
    extra_options = frozenset({"ignore_eos", "output_format", "tools", "suffix"})

    def __init__(
        self,
        artifacts: Any,
        pool: Any,
        *,
        n_ctx: int = 2048,
        n_threads: int = 1,
        parallel: int = 8,
        n_batch: int = 512,
        default_max_tokens: int = 512,
    ) -> None:
        super().__init__(artifacts, pool)
        self._n_ctx = n_ctx
        self._n_threads = n_threads
        self._parallel = parallel
        self._n_batch = n_batch
        self._default_max_tokens = default_max_tokens
        self._kv_per_token: dict[Path, int] = {}
        self._described: dict[Path, tuple[dict[str, str], bool]] = {}

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
        """Weights, plus the KV cache of every sequence (f16), plus compute buffers."""
        from .native import kv_bytes_per_token, read_metadata

        path = self.tagged_file(model, GGUF_TAG)
        weights = path.stat().st_size
        if model.declared_task == Task.EMBEDDINGS:
            return int(weights * 1.25) + _OVERHEAD
        per_token = self._kv_per_token.get(path)
        if per_token is None:  # read once per file: every request asks for the estimate
            try:
                meta = read_metadata(path)
            except ValueError as exc:  # not a GGUF llama.cpp can read: as a failed load
                raise ModelLoadFailed(f"loading {model.engine_model} failed: {exc}") from exc
            per_token = self._kv_per_token[path] = kv_bytes_per_token(meta)
        return weights + per_token * self._n_ctx * self._parallel + _OVERHEAD

    def load(self, model: ResolvedModel) -> Loaded:
        path = self.tagged_file(model, GGUF_TAG)
        if model.declared_task == Task.EMBEDDINGS:
            return self._load_embedder(model, path)
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        from .native import NativeModel
        from .scheduler import BatchScheduler

        native = NativeModel(
            path,
            n_seq=self._parallel,
            n_ctx_seq=self._n_ctx,
            n_batch=self._n_batch,
            n_threads=self._n_threads,
        )
        formatter = None
        template = native.meta("tokenizer.chat_template")
        if template:
            # The model's own chat template, rendered as llama-cpp-python does, so a model
            # without one refuses chat instead of falling back to a guessed format.
            formatter = Jinja2ChatFormatter(
                template=template,
                eos_token=native.piece(native.eos, special=True).decode(errors="ignore"),
                bos_token=native.piece(native.bos, special=True).decode(errors="ignore"),
                stop_token_ids=[native.eos],
            )
        scheduler = BatchScheduler(native, name=f"{model.registry_name}/{model.registry_version}")

        def close() -> None:
            scheduler.close()  # its thread is the only user of the context: stop it first
            native.close()

        return Loaded(
            handle=_Generator(native, scheduler, formatter, takes_tools(template)),
            size_bytes=self.estimate_bytes(model),
            close=close,
            stats=lambda: scheduler.stats,
        )

    def _load_embedder(self, model: ResolvedModel, path: Path) -> Loaded:
        from llama_cpp import Llama

        llm = Llama(
            model_path=str(path),
            n_ctx=self._n_ctx,
            n_threads=self._n_threads,
            embedding=True,
            verbose=False,
        )
        return Loaded(handle=llm, size_bytes=self.estimate_bytes(model), close=llm.close)

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

        def render(handle: _Generator) -> _Prompt:
            if params.suffix is None:
                return _Prompt(handle.native.tokenize(prompt), ())
            fim = handle.native.fim_tokens()
            if fim is None:
                raise InvalidRequest(
                    f"{model.engine_model} has no fill-in-the-middle tokens (capability "
                    "'insert'): suffix needs a code model that has them",
                    param="suffix",
                )
            pre, suf, mid = fim  # llama.cpp server's infill order: prefix, suffix, middle
            head = handle.native.tokenize(prompt, add_bos=False)
            tail = handle.native.tokenize(params.suffix, add_bos=False)
            return _Prompt([pre, *head, suf, *tail, mid], ())

        # Closed explicitly: a client hanging up must reach _generation's finally (which
        # frees the sequence) now, not when the garbage collector finds the generator.
        async with contextlib.aclosing(self._generation(model, render, params)) as chunks:
            async for chunk in chunks:
                yield chunk

    async def stream_chat(
        self, model: ResolvedModel, messages: Sequence[ChatMessage], params: SamplingParams
    ) -> AsyncIterator[GenerationChunk]:
        if any(message.images for message in messages):
            raise ModelNotServable("llamacpp models here take no images", param="messages")
        calling = bool(params.tools) and params.tool_choice != "none"
        if calling:  # the answer is a call (or a response) as JSON, under its grammar
            # Off the event loop: the tools' schemas are the client's, and may be megabytes.
            output = await asyncio.to_thread(tool_format, params)
            params = replace(params, output_format=output)

        def render(handle: _Generator) -> _Prompt:
            if handle.formatter is None:
                raise ModelNotServable(
                    f"{model.engine_model} has no chat template in its GGUF; use text-generation",
                    param="task",
                )
            native = handle.template_takes_tools
            payload = template_messages(messages, params, native=native)
            tools = openai_tools(params.tools) if calling and native else None
            result = handle.formatter(messages=payload, tools=tools)
            tokens = handle.native.tokenize(
                result.prompt, add_bos=not result.added_special, special=True
            )
            stop = result.stop if isinstance(result.stop, list) else [result.stop or ""]
            return _Prompt(tokens, tuple(s for s in stop if s))

        # Closed explicitly: a client hanging up must reach _generation's finally (which
        # frees the sequence) now, not when the garbage collector finds the generator.
        async with contextlib.aclosing(self._generation(model, render, params)) as chunks:
            if not calling:
                async for chunk in chunks:
                    yield chunk
                return
            final = None
            async for chunk in chunks:  # JSON until it is whole: nothing to stream before
                final = chunk.final or final
        assert final is not None
        if final.finish_reason == "length":
            raise InvalidRequest("the tool call did not fit in max_tokens", param="max_tokens")
        text, calls = answer_of(final.text)
        if text:
            yield GenerationChunk(text=text)
        reason = "tool_calls" if calls else final.finish_reason
        answer = replace(final, text=text, tool_calls=calls, finish_reason=reason)
        yield GenerationChunk(text="", done=True, final=answer)

    async def embed(self, model: ResolvedModel, inputs: Sequence[str]) -> Embeddings:
        if model.declared_task != Task.EMBEDDINGS:
            raise ModelNotServable(
                f"{model.engine_model} is registered for {model.declared_task!r}; llama.cpp "
                "embeds only with models registered for 'embeddings'",
                param="task",
            )
        texts = list(inputs)

        def run(llm: Any) -> Iterator[Any]:
            yield llm.create_embedding(texts)

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

    async def describe(self, model: ResolvedModel) -> ModelDetails:
        """From the GGUF's own metadata (read without loading its weights)."""
        from .native import read_gguf

        await self.fetch_files(model)
        path = self.tagged_file(model, GGUF_TAG)
        read = self._described.get(path)
        if read is None:  # once per file: a version's files never change
            read = self._described[path] = await asyncio.to_thread(read_gguf, path)
        meta, fim = read
        template = meta.get("tokenizer.chat_template", "")
        return gguf_details(meta, fim, model.declared_task, takes_tools(template))

    async def _grammar(self, params: SamplingParams) -> Any:
        """The request's grammar (a ``json_grammar.Grammar``), or None: a cache hit, or a
        conversion bounded by the schema limits, on a worker thread."""
        from .json_grammar import grammar_for

        if params.output_format is None:
            return None
        return await asyncio.to_thread(grammar_for, params.output_format)

    def _sampling(self, params: SamplingParams) -> Any:
        from .native import Sampling

        defaults = Sampling()
        return Sampling(
            temperature=defaults.temperature if params.temperature is None else params.temperature,
            top_p=defaults.top_p if params.top_p is None else params.top_p,
            top_k=defaults.top_k if params.top_k is None else params.top_k,
            seed=params.seed,
            repeat_penalty=(
                defaults.repeat_penalty if params.repeat_penalty is None else params.repeat_penalty
            ),
        )

    async def _generation(
        self, model: ResolvedModel, render: Callable[[_Generator], _Prompt], params: SamplingParams
    ) -> AsyncGenerator[GenerationChunk, None]:
        from .scheduler import Job

        if model.declared_task == Task.EMBEDDINGS:
            raise ModelNotServable(f"{model.engine_model} is an embeddings model", param="task")
        sampling = self._sampling(params)
        grammar = await self._grammar(params)  # a schema past the limits: refused unloaded
        lease = await self.acquire(model)
        parsed = None
        try:
            handle: _Generator = lease.handle
            prompt = render(handle)  # on the loop: jobs reach the scheduler in arrival order
            window = handle.scheduler.n_ctx_seq
            if len(prompt.tokens) >= window:
                raise InvalidRequest(
                    f"the prompt is {len(prompt.tokens)} tokens; {model.engine_model}'s context "
                    f"holds {window} per sequence (AIML_LLAMACPP_N_CTX)",
                    param="data",
                )
            loop = asyncio.get_running_loop()
            events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

            def emit(kind: str, value: Any) -> None:  # called on the scheduler's thread
                with contextlib.suppress(RuntimeError):  # the loop is gone: nobody listens
                    loop.call_soon_threadsafe(events.put_nowait, (kind, value))

            if grammar is not None:
                assert params.output_format is not None
                parsed = await parse_grammar(handle.native.vocab, grammar, params.output_format)
            job = Job(
                tokens=prompt.tokens,
                sampling=sampling,
                max_tokens=params.max_tokens or self._default_max_tokens,
                stop=(*params.stop, *prompt.stop),
                emit=emit,
                ignore_eos=params.ignore_eos,
                grammar=parsed,
            )
            try:
                handle.scheduler.submit(job)
            except RuntimeError as exc:
                raise EngineError(f"{model.engine_model} is being unloaded; retry") from exc
            parsed = None  # the job owns it
            text: list[str] = []
            try:
                while True:
                    kind, value = await events.get()
                    if kind == "text":
                        text.append(value)
                        yield GenerationChunk(text=value)
                    elif kind == "error":
                        raise EngineError(f"llama.cpp failed: {value}")
                    else:
                        finish = value
                        break
            finally:
                job.cancelled.set()  # a no-op when it finished; frees the sequence if not
                handle.scheduler.wake()
        finally:
            if parsed is not None:
                parsed.free()
            lease.release()
        if grammar is not None and grammar.open_bounds and finish == "stop":
            await asyncio.to_thread(grammar.check, "".join(text))
        final = Generation(
            text="".join(text),
            finish_reason=finish,
            prompt_tokens=job.prompt_tokens,
            completion_tokens=job.completion_tokens,
        )
        yield GenerationChunk(text="", done=True, final=final)


@dataclass(frozen=True, slots=True)
class _Generator:
    native: Any  # NativeModel
    scheduler: Any  # BatchScheduler
    formatter: Any  # the model's chat template, or None when the GGUF has none
    template_takes_tools: bool  # the template renders a `tools` variable itself


@dataclass(frozen=True, slots=True)
class _Prompt:
    tokens: list[int]
    stop: tuple[str, ...]


def takes_tools(template: str | None) -> bool:
    """Whether a chat template renders the tools itself (it reads a ``tools`` variable)."""
    if not template:
        return False
    from jinja2 import Environment, meta

    try:
        return "tools" in meta.find_undeclared_variables(Environment().parse(template))
    except Exception:  # jinja2 cannot parse it: the formatter will say so when it renders
        return False


def _pooled(embedding: Any) -> list[float]:
    """llama.cpp returns one vector per token when the model declares no pooling: mean them."""
    if embedding and isinstance(embedding[0], list):
        count = len(embedding)
        return [sum(column) / count for column in zip(*embedding, strict=True)]
    return [float(x) for x in embedding]
