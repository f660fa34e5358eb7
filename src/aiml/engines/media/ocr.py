"""OCR with RapidOCR (PP-OCRv4 detection and recognition on ONNX Runtime), and PDFs with
pypdfium2: a page's own text layer where it has one, OCR of the rendered page where not.

Two settings differ from RapidOCR's defaults, by measurement (issue 12's groundwork):
detection runs at the image's own size, only shrunk past ~1000-2000 px (its default grows
the short side to 736 px, 4x slower and less exact on text images), and the 180-degree
direction classifier is off (it turned correctly read upright lines over at 48 px).
PDFium is not thread-safe even across documents, so every pdfium call holds one lock.

A PDF is opened (parsed) once per request (:class:`PdfPages`, closed when the request ends,
cancelled or not) and read a page at a time (:meth:`OcrReader.read_page`), each page its
own run on the model, so a request past its deadline stops at the next page and another
request's OCR waits at most one page. A page is rendered only at a
size within the pixel limit: its size is read first (points), and a page too large for
the pixel limit at ``AIML_DOCUMENT_DPI`` is rendered at the highest lower DPI that fits
(no lower than :data:`MIN_DPI`; past that a 413 names the page): one rendered page at a
time per request, so its memory is bounded by the limit whatever the page claims to be.
"""

from __future__ import annotations

import io
import math
import threading
from pathlib import Path
from typing import Any

from aiml.errors import EngineError, InvalidRequest, ModelLoadFailed, PayloadTooLarge
from aiml.types import DocumentPage, TextLine

__all__ = ["OcrReader", "PdfPages"]

_PDFIUM = threading.Lock()
#: A page with fewer visible characters in its text layer than this is read by OCR.
_TEXT_LAYER_MIN = 16
#: The lowest resolution a page too large for the pixel limit is shrunk to; below it, 413
#: (text of a few points would be a few pixels high: nothing OCR could read).
MIN_DPI = 36


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
        return self._lines(image if image.mode == "RGB" else image.convert("RGB"))

    def _lines(self, pixels: Any) -> list[TextLine]:
        """The lines of an RGB PIL image, or of a BGR numpy array (a rendered page)."""
        found, _ = self._ocr(pixels, use_cls=False)
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

    def read_page(self, pages: PdfPages, index: int, *, dpi: int, max_pixels: int) -> DocumentPage:
        """Page ``index`` (from 0): its text layer, else OCR of the page rendered at ``dpi``
        or the highest lower DPI within ``max_pixels`` (413 if not even :data:`MIN_DPI`)."""
        text, pixels, dpi = pages.page(index, dpi=dpi, max_pixels=max_pixels)
        number = index + 1
        if pixels is None:
            return DocumentPage(number=number, method="text", text=text)
        lines = self._lines(pixels)  # OCR runs outside pdfium's lock
        del pixels  # the page's pixels go before the result is built
        text = "\n".join(line.text for line in lines)
        return DocumentPage(number=number, method="ocr", text=text, lines=tuple(lines), dpi=dpi)


class PdfPages:
    """A request's PDF, parsed once for all its pages (a PDF whose cross-reference table
    must be rebuilt is rescanned at each parse, under the process-wide pdfium lock).

    Made on the event loop (no pdfium call); :meth:`open` and :meth:`page` run in worker
    threads, :meth:`close` too (it may wait for the lock). Each holds the lock, and a
    closed document is never touched again: a worker still on a page when its request is
    cancelled and the document closed finds it closed, and an :meth:`open` that comes
    after :meth:`close` opens nothing, so the document never outlives the request.
    """

    def __init__(self, pdf: bytes) -> None:
        self._pdf = pdf
        self._document: Any = None
        self._closed = False

    def open(self, *, max_pages: int) -> int:
        """Parse the PDF; its page count (400 if it is not a PDF, 413 past ``max_pages``)."""
        import pypdfium2

        with _PDFIUM:
            if self._closed:
                raise EngineError("the document was closed before it was opened")
            try:
                self._document = pypdfium2.PdfDocument(self._pdf)
            except pypdfium2.PdfiumError as exc:
                raise InvalidRequest(f"not a PDF aiml can read ({exc})", param="document") from exc
            count = len(self._document)
        if count > max_pages:
            raise PayloadTooLarge(
                f"the document has {count} pages; the limit is {max_pages} "
                "(AIML_MAX_DOCUMENT_PAGES)",
                param="document",
            )
        return count

    def page(self, index: int, *, dpi: int, max_pixels: int) -> tuple[str, Any, int]:
        """Page ``index``'s text layer, and unless that has text, its pixels rendered at
        the DPI it was rendered at (BGR numpy, or None)."""
        with _PDFIUM:
            if self._document is None:
                raise EngineError("the document was closed (its request ended)")
            page = self._document[index]
            try:
                textpage = page.get_textpage()
                text = textpage.get_text_range().replace("\r\n", "\n").strip()
                textpage.close()
                pixels = None
                if sum(not c.isspace() for c in text) < _TEXT_LAYER_MIN:
                    width, height = page.get_size()
                    dpi = _fitting_dpi(width, height, dpi, max_pixels, index + 1)
                    bitmap = page.render(scale=dpi / 72)  # BGR, 3 bytes a pixel
                    # A view of the buffer pypdfium2 allocated in Python for the bitmap (so
                    # it outlives the bitmap): the page's one copy of its pixels (PIL's
                    # route copied them 4 more times).
                    pixels = bitmap.to_numpy()
                    bitmap.close()
            finally:
                page.close()
        return text, pixels, dpi

    def close(self) -> None:
        with _PDFIUM:
            self._closed = True
            if self._document is not None:
                self._document.close()
                self._document = None


def _fitting_dpi(width_pt: float, height_pt: float, dpi: int, max_pixels: int, number: int) -> int:
    """``dpi``, or the highest lower one at which the page's pixels fit in ``max_pixels``."""

    def pixels(at: int) -> int:  # what pdfium renders: each side rounded up
        return math.ceil(width_pt * at / 72) * math.ceil(height_pt * at / 72)

    if pixels(dpi) > max_pixels:
        area = max(width_pt * height_pt, 1e-9)
        dpi = min(dpi, math.floor(72 * math.sqrt(max_pixels / area) + 1e-6))  # then checked
        while dpi >= MIN_DPI and pixels(dpi) > max_pixels:
            dpi -= 1
    if dpi < MIN_DPI:
        raise PayloadTooLarge(
            f"page {number} is {width_pt / 72:.4g} x {height_pt / 72:.4g} inches: even at "
            f"{MIN_DPI} dpi it is over {max_pixels} pixels (AIML_MAX_IMAGE_PIXELS)",
            param="document",
        )
    return dpi


def open_image(data: bytes, *, max_pixels: int, param: str = "image") -> Any:
    """A PIL image from the bytes of any format Pillow reads; 400 if none, 413 if huge.

    The size comes from the header, so a huge image is refused before it is decoded; so is
    one past Pillow's own bomb limit (twice ``PIL.Image.MAX_IMAGE_PIXELS``), which it
    raises while reading the header: a 413 too, not a 400 (that is what it is).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            raise _too_many_pixels(f"{width}x{height}", max_pixels, param)
        image.load()
    except Image.DecompressionBombError as exc:
        raise _too_many_pixels(f"over Pillow's limit ({exc})", max_pixels, param) from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise InvalidRequest(f"not an image aiml can read ({exc})", param=param) from exc
    return image


def _too_many_pixels(size: str, max_pixels: int, param: str) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the image is {size}; the limit is {max_pixels} pixels (AIML_MAX_IMAGE_PIXELS)",
        param=param,
    )
