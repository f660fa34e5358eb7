"""ONNX models in this process, on ONNX Runtime: voice activity (Silero VAD), OCR and
document analysis (PP-OCRv4 through RapidOCR).

A registered ONNX model is one ``.onnx`` file (its name in the ``onnx_file`` tag; Silero
VAD) or a folder of them (PP-OCR's detection, recognition and direction models); the
version's task says which pipeline runs it. Each model runs one piece of work at a time (OCR
takes ~0.5 GiB while it reads a page), queued first come, first served by the pool's
per-model lock: an image, a page of a document (each page queues again, so a long document
holds another request's OCR up by one page, not by the document), or a request's audio for
voice activity, decoded and scored a minute at a time. Every run stops at its next piece
once its request is cancelled or past its deadline.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import anyio.to_thread
import numpy as np

from aiml.engines.local import MediaEngine
from aiml.engines.pool import Loaded
from aiml.errors import ModelLoadFailed, ModelNotServable
from aiml.types import (
    DocumentPage,
    ResolvedModel,
    SpeechSegment,
    Task,
    TextLine,
)

from .audio import RATE, decode_chunks
from .ocr import OcrReader, PdfPages
from .vad import speech_segments

__all__ = ["ONNX_FILE_TAG", "OnnxEngine"]

#: The version tag naming the model's .onnx file, when it is one file.
ONNX_FILE_TAG = "onnx_file"

T = TypeVar("T")


class OnnxEngine(MediaEngine):
    """Registered ONNX models for voice activity, OCR and documents."""

    name = "onnx"
    tasks = frozenset({Task.VAD, Task.OCR, Task.DOCUMENT_ANALYSIS})

    def __init__(
        self,
        artifacts: Any,
        pool: Any,
        *,
        threads: int,
        max_audio_s: float,
        max_image_pixels: int,
        max_pages: int,
        dpi: int,
    ) -> None:
        super().__init__(artifacts, pool)
        self._threads = threads
        self._max_audio_s = max_audio_s
        self._max_pixels = max_image_pixels
        self._max_pages = max_pages
        self._dpi = dpi

    def estimate_bytes(self, model: ResolvedModel) -> int:
        weights = sum(p.stat().st_size for p in self.folder(model).rglob("*.onnx"))
        if model.declared_task == Task.VAD:
            return weights + (32 << 20)
        return weights + (640 << 20)  # OCR's buffers peak at ~0.5-0.8 GiB on an A4 page

    def load(self, model: ResolvedModel) -> Loaded:
        if model.declared_task == Task.VAD:
            from .vad import SileroVad

            try:
                vad = SileroVad(self.tagged_file(model, ONNX_FILE_TAG), threads=1)
            except (OSError, RuntimeError, ValueError) as exc:  # onnxruntime's load errors
                raise ModelLoadFailed(f"{model.engine_model}: {exc}") from exc
            return Loaded(handle=vad, size_bytes=self.estimate_bytes(model))
        reader = OcrReader(self.folder(model), threads=self._threads)
        return Loaded(handle=reader, size_bytes=self.estimate_bytes(model))

    async def detect_speech(self, model: ResolvedModel, audio: bytes) -> list[SpeechSegment]:
        self._expect(model, Task.VAD)
        most = self._max_audio_s

        def run(vad: Any) -> Iterator[list[SpeechSegment] | None]:
            """None after each piece (about a minute of audio: where a stopped run ends),
            then the segments."""
            windows = vad.windows()
            scored, samples = [], 0
            for piece in decode_chunks(audio, max_seconds=most):
                scored.append(windows.feed(piece))
                samples += piece.size
                yield None
            scored.append(windows.finish())
            yield speech_segments(np.concatenate(scored), samples / RATE)

        segments = await self._last(model, run)
        assert segments is not None  # a run stopped early raises instead
        return segments

    async def read_text(self, model: ResolvedModel, image: bytes) -> list[TextLine]:
        self._expect(model, Task.OCR, Task.DOCUMENT_ANALYSIS)
        pixels = self._max_pixels
        return await self._alone(model, lambda ocr: ocr.read_bytes(image, max_pixels=pixels))

    async def analyse_document(self, model: ResolvedModel, pdf: bytes) -> list[DocumentPage]:
        self._expect(model, Task.OCR, Task.DOCUMENT_ANALYSIS)
        most, dpi, pixels = self._max_pages, self._dpi, self._max_pixels
        document = PdfPages(pdf)  # parsed once, by its first run; closed however this ends
        try:
            # Parsing needs pdfium's lock, not the model: other requests' OCR goes on meanwhile.
            count = await anyio.to_thread.run_sync(functools.partial(document.open, max_pages=most))
            pages = []
            for index in range(count):  # a run per page: see the module's docstring

                def page(ocr: OcrReader, index: int = index) -> DocumentPage:
                    return ocr.read_page(document, index, dpi=dpi, max_pixels=pixels)

                pages.append(await self._alone(model, page))
            return pages
        finally:
            # In its own task, awaited shielded: a second cancellation cannot skip it.
            closing = asyncio.ensure_future(anyio.to_thread.run_sync(document.close))
            await asyncio.shield(closing)

    async def _alone(self, model: ResolvedModel, run: Callable[[Any], T]) -> T:
        """``run(model)`` alone on the leased model, in a worker thread (not started at all
        if the request is stopped first)."""

        def once(handle: Any) -> Iterator[T]:
            yield run(handle)

        return await self._last(model, once)

    async def _last(self, model: ResolvedModel, run: Callable[[Any], Iterator[T]]) -> T:
        """The last item of ``run(model)``, alone on the leased model in a worker thread, an
        item at a time (a stopped request starts no further item)."""
        lease = await self.acquire(model)
        items = [item async for item in self.exclusive(lease, run)]
        return items[-1]

    def _expect(self, model: ResolvedModel, *tasks: Task) -> None:
        if model.declared_task not in tasks:
            raise ModelNotServable(
                f"{model.engine_model} is registered for {model.declared_task!r}",
                param="model_name",
            )
