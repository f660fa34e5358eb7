"""One module per task; :data:`TASK_SPECS` is the table the router consults."""

from __future__ import annotations

from typing import Any

from aiml.types import Task

from .asr import AsrSpec
from .base import Handler, TaskSpec
from .chat import ChatSpec
from .embeddings import EmbeddingsSpec
from .image_captioning import ImageCaptioningSpec
from .ocr import DocumentAnalysisSpec, OcrSpec
from .text_classification import TextClassificationSpec
from .text_generation import TextGenerationSpec
from .vad import VadSpec
from .vlm import VlmSpec

__all__ = ["TASK_SPECS", "Handler", "TaskSpec"]

TASK_SPECS: dict[Task, TaskSpec[Any]] = {
    spec.task: spec
    for spec in (
        TextGenerationSpec(),
        ChatSpec(),
        EmbeddingsSpec(),
        VlmSpec(),
        TextClassificationSpec(),
        AsrSpec(),
        VadSpec(),
        OcrSpec(),
        DocumentAnalysisSpec(),
        ImageCaptioningSpec(),
    )
}
