"""OCR with RapidOCR (PP-OCRv4 detection and recognition on ONNX Runtime), and PDFs with
pypdfium2: a page's own text layer where it has one, OCR of the rendered page where not.

Two settings differ from RapidOCR's defaults, by measurement (issue 12's groundwork):
detection runs at the image's own size, only shrunk past ~1000-2000 px (its default grows
the short side to 736 px, 4x slower and less exact on text images), and the 180-degree
direction classifier is off (it turned correctly read upright lines over at 48 px).
PDFium is not thread-safe even across documents, so every pdfium call holds one lock.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

from aiml.errors import InvalidRequest, ModelLoadFailed, PayloadTooLarge
from aiml.types import DocumentPage, TextLine

__all__ = ["OcrReader"]

_PDFIUM = threading.Lock()
#: A page with fewer visible characters in its text layer than this is read by OCR.
_TEXT_LAYER_MIN = 16


class OcrReader:
    """A loaded PP-OCR model set: ``*det*.onnx``, ``*rec*.onnx`` and optionally ``*cls*.onnx``
    in one folder."""

    def __init__(self, folder: Path, *, threads: int) -> None:
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as exc:
            raise ModelLoadFailed(f"OCR needs rapidocr-onnxruntime ({exc})") from exc
        paths = {
            role: next(iter(sorted(folder.glob(f"*{role}*.onnx"))), None)
            for role in ("det", "rec", "cls")
        }
        if paths["det"] is None or paths["rec"] is None:
            raise ModelLoadFailed(f"{folder.name}: an OCR model needs *det*.onnx and *rec*.onnx")
        kwargs: dict[str, Any] = {
            "det_model_path": str(paths["det"]),
            "rec_model_path": str(paths["rec"]),
            "det_limit_type": "max",
            "intra_op_num_threads": threads,
            "inter_op_num_threads": 1,
        }
        if paths["cls"] is not None:
            kwargs["cls_model_path"] = str(paths["cls"])
        self._ocr = RapidOCR(**kwargs)

    def read(self, image: Any) -> list[TextLine]:
        """The lines of a PIL image, top to bottom."""
        found, _ = self._ocr(image.convert("RGB"), use_cls=False)
        return [
            TextLine(
                text=str(text),
                box=tuple((round(float(x), 1), round(float(y), 1)) for x, y in box),
                confidence=round(float(score), 4),
            )
            for box, text, score in found or ()
        ]

    def read_bytes(self, data: bytes, *, max_pixels: int) -> list[TextLine]:
        return self.read(open_image(data, max_pixels=max_pixels))

    def pages(self, pdf: bytes, *, max_pages: int, dpi: int) -> list[DocumentPage]:
        """Each page's text: its text layer, else OCR of the page rendered at ``dpi``."""
        import pypdfium2

        with _PDFIUM:
            try:
                document = pypdfium2.PdfDocument(pdf)
            except pypdfium2.PdfiumError as exc:
                raise InvalidRequest(f"not a PDF aiml can read ({exc})", param="document") from exc
        try:
            with _PDFIUM:
                count = len(document)
            if count > max_pages:
                raise PayloadTooLarge(
                    f"the document has {count} pages; the limit is {max_pages} "
                    "(AIML_MAX_DOCUMENT_PAGES)",
                    param="document",
                )
            return [self._page(document, number, dpi) for number in range(count)]
        finally:
            with _PDFIUM:
                document.close()

    def _page(self, document: Any, index: int, dpi: int) -> DocumentPage:
        with _PDFIUM:  # OCR runs outside the lock, on the rendered image
            page = document[index]
            try:
                textpage = page.get_textpage()
                text = textpage.get_text_range().replace("\r\n", "\n").strip()
                textpage.close()
                image = None
                if sum(not c.isspace() for c in text) < _TEXT_LAYER_MIN:
                    image = page.render(scale=dpi / 72).to_pil()
            finally:
                page.close()
        if image is None:
            return DocumentPage(number=index + 1, method="text", text=text)
        lines = self.read(image)
        text = "\n".join(line.text for line in lines)
        return DocumentPage(number=index + 1, method="ocr", text=text, lines=tuple(lines))


def open_image(data: bytes, *, max_pixels: int, param: str = "image") -> Any:
    """A PIL image from the bytes of any format Pillow reads; 400 if none, 413 if huge."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            raise PayloadTooLarge(
                f"the image is {width}x{height}; the limit is {max_pixels} pixels", param=param
            )
        image.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise InvalidRequest(f"not an image aiml can read ({exc})", param=param) from exc
    return image
