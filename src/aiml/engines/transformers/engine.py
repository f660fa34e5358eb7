"""Hugging Face models in this process, on ``transformers`` (CPU).

What a registered folder is loaded as depends on its ``inference_task`` tag: a causal LM
(text-generation, chat), an encoder with the pooling the model declares (embeddings), or a
sequence classifier (text-classification). Loading never runs code from the folder
(``trust_remote_code`` off) and never unpickles (safetensors only). Generation runs one
request at a time per model in a worker thread and stops at the next token when the client
goes away; embeddings of concurrent requests are batched into one forward pass.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import jinja2

from aiml.engines.details import hf_details
from aiml.engines.local import LocalEngine
from aiml.engines.pool import Loaded, ModelPool
from aiml.errors import InvalidRequest, ModelLoadFailed, ModelNotServable
from aiml.types import (
    ChatMessage,
    Embeddings,
    Generation,
    GenerationChunk,
    Label,
    ModelDetails,
    RegistryVersion,
    ResolvedModel,
    SamplingParams,
    Task,
)

from .batching import MicroBatcher
from .pooling import Pooling

__all__ = ["Pooling", "TransformersEngine"]

_CAUSAL = frozenset({Task.TEXT_GENERATION, Task.CHAT, None})
_MAX_EMBED_TOKENS = 512


@dataclass
class _Model:
    """A loaded model and what serving it needs."""

    kind: str  # causal, encoder, classifier
    model: Any
    tokenizer: Any
    pooling: Pooling | None = None


class TransformersEngine(LocalEngine):
    """Registered Hugging Face folders, run with transformers on the CPU."""

    name = "transformers"
    tasks = frozenset({Task.TEXT_GENERATION, Task.CHAT, Task.EMBEDDINGS, Task.TEXT_CLASSIFICATION})

    def __init__(
        self,
        artifacts: Any,
        pool: ModelPool,
        *,
        embed_max_batch: int = 32,
        embed_max_wait_ms: float = 5.0,
        default_max_tokens: int = 512,
        threads: int | None = None,
    ) -> None:
        super().__init__(artifacts, pool)
        self._threads = threads
        self._embed_max_batch = embed_max_batch
        self._embed_max_wait_s = embed_max_wait_ms / 1000
        self._default_max_tokens = default_max_tokens

    def check_version(self, version: RegistryVersion) -> None:
        task = version.tag("inference_task")
        if task is not None and task not in self.tasks:
            raise ModelNotServable(
                f"registered model {version.name!r} version {version.version} has task "
                f"{task!r}; transformers serves text-generation, chat, embeddings and "
                "text-classification",
                param="model_name",
            )

    def estimate_bytes(self, model: ResolvedModel) -> int:
        weights = sum(p.stat().st_size for p in self.folder(model).rglob("*.safetensors"))
        return int(weights * 1.2) + (64 << 20)

    async def describe(self, model: ResolvedModel) -> ModelDetails:
        """From the folder's config and tokenizer files (no weights read)."""
        await self.fetch_files(model)
        return await anyio.to_thread.run_sync(hf_details, self.folder(model), model.declared_task)

    def load(self, model: ResolvedModel) -> Loaded:
        import torch
        import transformers

        transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        if self._threads:
            torch.set_num_threads(self._threads)  # its share of the cores (engines/cores.py)
        folder = self.folder(model)
        kind = _kind(model.declared_task)
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(
                folder, trust_remote_code=False, local_files_only=True
            )
            classes = {
                "causal": transformers.AutoModelForCausalLM,
                "encoder": transformers.AutoModel,
                "classifier": transformers.AutoModelForSequenceClassification,
            }
            loaded = classes[kind].from_pretrained(
                folder,
                use_safetensors=True,
                dtype=torch.float32,
                trust_remote_code=False,
                local_files_only=True,
            )
        except (OSError, ValueError) as exc:
            raise ModelLoadFailed(f"{model.engine_model}: {exc}") from exc
        loaded.eval()
        pooling = Pooling.declared_by(folder) if kind == "encoder" else None
        size = sum(t.numel() * t.element_size() for t in (*loaded.parameters(), *loaded.buffers()))
        return Loaded(handle=_Model(kind, loaded, tokenizer, pooling), size_bytes=size)

    async def stream_generate(
        self,
        model: ResolvedModel,
        prompt: str,
        params: SamplingParams,
        *,
        images: Sequence[bytes] = (),
    ) -> AsyncIterator[GenerationChunk]:
        if images:
            raise ModelNotServable("transformers models here take no images", param="task")

        def encode(m: _Model) -> Any:
            return m.tokenizer(prompt, return_tensors="pt")

        async for chunk in self._generation(model, encode, params):
            yield chunk

    async def stream_chat(
        self, model: ResolvedModel, messages: Sequence[ChatMessage], params: SamplingParams
    ) -> AsyncIterator[GenerationChunk]:
        _no_images(messages)
        payload = [{"role": m.role, "content": m.content} for m in messages]

        def encode(m: _Model) -> Any:
            if not getattr(m.tokenizer, "chat_template", None):
                raise ModelNotServable(
                    f"{model.engine_model} has no chat template; use text-generation",
                    param="task",
                )
            try:
                return m.tokenizer.apply_chat_template(
                    payload, add_generation_prompt=True, return_tensors="pt", return_dict=True
                )
            except (ValueError, jinja2.TemplateError) as exc:  # the template refused them
                raise InvalidRequest(
                    f"{model.engine_model}'s chat template cannot render these messages: {exc}",
                    param="messages",
                ) from None

        async for chunk in self._generation(model, encode, params):
            yield chunk

    async def embed(self, model: ResolvedModel, inputs: Sequence[str]) -> Embeddings:
        lease = await self.acquire(model)
        entry = lease.entry
        try:
            handle: _Model = entry.handle
            if handle.kind != "encoder":
                raise ModelNotServable(
                    f"{model.engine_model} is registered for {model.declared_task!r}, "
                    "not embeddings",
                    param="task",
                )
            batcher = entry.extras.get("batcher")
            if batcher is None:
                batcher = MicroBatcher(
                    lambda texts: _embed_batch(handle, texts),
                    max_batch=self._embed_max_batch,
                    max_wait_s=self._embed_max_wait_s,
                )
                entry.extras["batcher"] = batcher
            rows: list[tuple[list[float], int]] = await batcher.submit(list(inputs))
        finally:
            lease.release()
        return Embeddings(vectors=[row[0] for row in rows], prompt_tokens=sum(r[1] for r in rows))

    async def classify(self, model: ResolvedModel, inputs: Sequence[str]) -> list[list[Label]]:
        lease = await self.acquire(model)
        texts = list(inputs)

        def run(m: _Model) -> Iterator[list[list[Label]]]:
            if m.kind != "classifier":
                raise ModelNotServable(f"{model.engine_model} is not a classifier", param="task")
            yield _classify(m, texts)

        result: list[list[Label]] = []
        async with contextlib.aclosing(self.exclusive(lease, run)) as items:
            async for labels in items:
                result = labels
        return result

    async def health(self) -> None:
        return None

    async def _generation(
        self, model: ResolvedModel, encode: Any, params: SamplingParams
    ) -> AsyncIterator[GenerationChunk]:
        lease = await self.acquire(model)
        max_new = params.max_tokens or self._default_max_tokens
        counts = {"prompt": 0, "completion": 0}
        limits = {"max_new": max_new}

        def run(m: _Model) -> Iterator[str]:
            if m.kind != "causal":
                raise ModelNotServable(f"{model.engine_model} does not generate", param="task")
            inputs = encode(m)
            counts["prompt"] = prompt = int(inputs["input_ids"].shape[-1])
            window = _context_window(m)
            if prompt >= window:
                raise InvalidRequest(
                    f"the prompt is {prompt} tokens; {model.engine_model}'s context holds {window}",
                    param="data",
                )
            limits["max_new"] = min(max_new, window - prompt)
            yield from _generate(m, inputs, params, limits["max_new"], counts)

        text: list[str] = []
        async with contextlib.aclosing(self.exclusive(lease, run)) as items:
            async for piece in items:
                text.append(piece)
                yield GenerationChunk(text=piece)
        finish = "length" if counts["completion"] >= limits["max_new"] else "stop"
        final = Generation(
            text="".join(text),
            finish_reason=finish,
            prompt_tokens=counts["prompt"],
            completion_tokens=counts["completion"],
        )
        yield GenerationChunk(text="", done=True, final=final)


def _no_images(messages: Sequence[ChatMessage]) -> None:
    if any(message.images for message in messages):
        raise ModelNotServable("transformers models here take no images", param="messages")


def _context_window(m: _Model) -> int:
    """Positions the model can attend to (prompt plus generated tokens)."""
    config = m.model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 1 << 30  # no declared limit


def _kind(task: str | None) -> str:
    if task in _CAUSAL:
        return "causal"
    if task == Task.EMBEDDINGS:
        return "encoder"
    if task == Task.TEXT_CLASSIFICATION:
        return "classifier"
    raise ModelNotServable(f"transformers cannot serve task {task!r}", param="model_name")


def _generate(
    m: _Model, inputs: Any, params: SamplingParams, max_new: int, counts: dict[str, int]
) -> Iterator[str]:
    """Generate in a helper thread, yielding decoded text as tokens arrive; stoppable."""
    import torch
    import transformers

    stop = threading.Event()

    class _Stop(transformers.StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            counts["completion"] += 1
            return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool)

    streamer = transformers.TextIteratorStreamer(
        m.tokenizer, skip_prompt=True, skip_special_tokens=True
    )
    sampling = params.temperature is not None and params.temperature >= params.GREEDY_BELOW
    kwargs: dict[str, Any] = {
        **inputs,
        "max_new_tokens": max_new,
        "do_sample": sampling,
        "streamer": streamer,
        "stopping_criteria": transformers.StoppingCriteriaList([_Stop()]),
        "pad_token_id": m.tokenizer.pad_token_id or m.tokenizer.eos_token_id,
    }
    if sampling:
        kwargs.update(temperature=params.temperature)
        if params.top_p is not None:
            kwargs["top_p"] = params.top_p
        if params.top_k is not None:
            kwargs["top_k"] = params.top_k
    if params.repeat_penalty is not None:
        kwargs["repetition_penalty"] = params.repeat_penalty
    if params.stop:
        kwargs.update(stop_strings=list(params.stop), tokenizer=m.tokenizer)
    if params.seed is not None:
        torch.manual_seed(params.seed)  # under the model's lock: no other generation runs
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with torch.inference_mode():
                m.model.generate(**kwargs)
        except BaseException as exc:
            errors.append(exc)
            streamer.end()  # type: ignore[no-untyped-call]

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    exhausted = False
    try:
        for piece in streamer:
            if piece:
                yield piece
        exhausted = True
    finally:
        stop.set()
        if not exhausted:  # the consumer left: generate() stops at its next token
            for _ in streamer:
                pass
        worker.join()
    if errors:
        raise errors[0]


def _embed_batch(m: _Model, texts: list[str]) -> list[tuple[list[float], int]]:
    """One vector per text, with the number of tokens it took."""
    import torch

    assert m.pooling is not None
    limit = min(int(getattr(m.tokenizer, "model_max_length", _MAX_EMBED_TOKENS)), _MAX_EMBED_TOKENS)
    batch = m.tokenizer(texts, padding=True, truncation=True, max_length=limit, return_tensors="pt")
    with torch.inference_mode():
        hidden = m.model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    mode = m.pooling.mode
    if mode == "cls":
        pooled = hidden[:, 0]
    elif mode == "max":
        pooled = hidden.masked_fill(mask == 0, float("-inf")).max(dim=1).values
    elif mode == "lasttoken":
        last = batch["attention_mask"].sum(dim=1) - 1
        pooled = hidden[torch.arange(hidden.shape[0]), last]
    else:
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    if m.pooling.normalize:
        pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
    vectors: list[list[float]] = pooled.tolist()
    counts: list[int] = batch["attention_mask"].sum(dim=1).tolist()
    return list(zip(vectors, counts, strict=True))


def _classify(m: _Model, texts: list[str]) -> list[list[Label]]:
    import torch

    batch = m.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        probabilities = m.model(**batch).logits.softmax(dim=-1)
    names = m.model.config.id2label
    out = []
    for row in probabilities.tolist():
        labels = [Label(label=str(names.get(i, i)), score=float(p)) for i, p in enumerate(row)]
        out.append(sorted(labels, key=lambda label: label.score, reverse=True))
    return out
