"""ONNX models in this process, on ONNX Runtime: voice activity (Silero VAD), OCR and
document analysis (PP-OCRv4 through RapidOCR).

A registered ONNX model is one ``.onnx`` file (its name in the ``onnx_file`` tag; Silero
VAD) or a folder of them (PP-OCR's detection, recognition and direction models); the
version's task says which pipeline runs it. Each model runs one request at a time (the VAD
session carries state, and OCR takes ~0.5 GiB while it reads a page), queued first come,
first served by the pool's per-model lock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from aiml.errors import ModelLoadFailed, ModelNotServable
from aiml.types import (
    DocumentPage,
    ResolvedModel,
    SpeechSegment,
    Task,
    TextLine,
)

from .audio import RATE, decode
from .local import MediaEngine
from .pool import Loaded

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
        from .ocr import OcrReader

        reader = OcrReader(self.folder(model), threads=self._threads)
        return Loaded(handle=reader, size_bytes=self.estimate_bytes(model))

    async def detect_speech(self, model: ResolvedModel, audio: bytes) -> list[SpeechSegment]:
        self._expect(model, Task.VAD)
        most = self._max_audio_s

        def run(vad: Any) -> list[SpeechSegment]:
            from .vad import speech_segments

            samples = decode(audio, max_seconds=most)
            return speech_segments(vad.probabilities(samples), samples.size / RATE)

        return await self._alone(model, run)

    async def read_text(self, model: ResolvedModel, image: bytes) -> list[TextLine]:
        self._expect(model, Task.OCR, Task.DOCUMENT_ANALYSIS)
        pixels = self._max_pixels
        return await self._alone(model, lambda ocr: ocr.read_bytes(image, max_pixels=pixels))

    async def analyse_document(self, model: ResolvedModel, pdf: bytes) -> list[DocumentPage]:
        self._expect(model, Task.OCR, Task.DOCUMENT_ANALYSIS)
        pages, dpi = self._max_pages, self._dpi
        return await self._alone(model, lambda ocr: ocr.pages(pdf, max_pages=pages, dpi=dpi))

    async def _alone(self, model: ResolvedModel, run: Callable[[Any], T]) -> T:
        """``run(model)`` alone on the leased model, in a worker thread."""
        lease = await self.acquire(model)
        results = [item async for item in self.exclusive(lease, lambda m: iter([run(m)]))]
        return results[0]

    def _expect(self, model: ResolvedModel, *tasks: Task) -> None:
        if model.declared_task not in tasks:
            raise ModelNotServable(
                f"{model.engine_model} is registered for {model.declared_task!r}",
                param="model_name",
            )
