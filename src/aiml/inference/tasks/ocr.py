"""``ocr``: ``data: {image: base64}`` -> ``{text, lines: [{text, box, confidence}]}``;
``document-analysis``: ``data: {document: base64 PDF}`` -> ``{text, pages: [{page, method,
text, lines, dpi}]}``, each page from its text layer, or OCR where it has none (``dpi``: what
the page was rendered at, its boxes in those pixels; null for a text-layer page)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from aiml.engines.base import Engine
from aiml.types import ResolvedModel, Task, TextLine

from ..limits import Measure
from .base import Handler, NoOptions, StrictModel, TaskSpec, decode_base64, parse_model

__all__ = ["DocumentAnalysisSpec", "OcrSpec"]


class _Image(StrictModel):
    image: str = Field(min_length=1)


class _Document(StrictModel):
    document: str = Field(min_length=1)


@dataclass(frozen=True, slots=True)
class OcrInput:
    data: bytes
    image: bool  # an image, or a PDF document

    def measure(self) -> Measure:
        return Measure(image_bytes=(len(self.data),) if self.image else ())


def _lines(lines: tuple[TextLine, ...] | list[TextLine]) -> list[dict[str, Any]]:
    return [
        {"text": line.text, "box": [list(p) for p in line.box], "confidence": line.confidence}
        for line in lines
    ]


class _Read(Handler[OcrInput]):
    async def run(self, engine: Engine, model: ResolvedModel, request: OcrInput) -> dict[str, Any]:
        if request.image:
            lines = await engine.read_text(model, request.data)
            return {"text": "\n".join(line.text for line in lines), "lines": _lines(lines)}
        pages = await engine.analyse_document(model, request.data)
        return {
            "text": "\n\n".join(page.text for page in pages),
            "page_count": len(pages),
            "pages": [
                {
                    "page": p.number,
                    "method": p.method,
                    "text": p.text,
                    "lines": _lines(p.lines),
                    "dpi": p.dpi,
                }
                for p in pages
            ],
        }


class OcrSpec(TaskSpec[OcrInput]):
    task = Task.OCR
    _read = _Read()

    def parse(self, data: Mapping[str, Any], options: Mapping[str, Any]) -> OcrInput:
        parsed = parse_model(_Image, data, "data")
        parse_model(NoOptions, options, "options")
        return OcrInput(decode_base64(parsed.image, "data.image"), image=True)

    def handler_for(self, model: ResolvedModel) -> Handler[OcrInput]:
        return self._read


class DocumentAnalysisSpec(OcrSpec):
    task = Task.DOCUMENT_ANALYSIS

    def parse(self, data: Mapping[str, Any], options: Mapping[str, Any]) -> OcrInput:
        parsed = parse_model(_Document, data, "data")
        parse_model(NoOptions, options, "options")
        return OcrInput(decode_base64(parsed.document, "data.document"), image=False)
