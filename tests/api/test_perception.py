"""Voice activity (Silero VAD on ONNX Runtime), OCR (PP-OCRv4 through RapidOCR) and PDF
document analysis, on the models the PyPI packages ship, registered like every other model;
image captioning over the vlm path; the earlier system's other tasks refused by name."""

from __future__ import annotations

import base64
import io
import re
import threading
import time
import wave
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from aiml.bundled import BUNDLED
from tests.conftest import RunningAiml, Shared, launch_aiml
from tests.fakes.documents import (
    char_error_rate,
    giant_page_pdf,
    scanned_pdf,
    text_image,
    text_pdf,
)
from tests.fakes.speech import espeak_available, silence_wav, speak

pytestmark = pytest.mark.slow

LINES = ["Invoice 2024-117 for ACME Corp.", "Total due: 1,250.00 EUR by 30 June"]


@pytest.fixture(scope="module")
def models(shared: Shared, tmp_path_factory: pytest.TempPathFactory) -> Shared:
    root = tmp_path_factory.mktemp("bundled")
    located = {model.registered_name: model.locate(root) for model in BUNDLED}
    shared.registry.register_files(located["silero-vad"], "silero-vad")  # the task from its name
    shared.registry.register_files(located["pp-ocrv4"], "pp-ocrv4")  # det + rec: ocr
    shared.registry.register_files(located["pp-ocrv4"], "pp-docs", task="document-analysis")
    return shared


def _infer(
    shared: Shared | RunningAiml,
    task: str,
    model: str,
    data: dict[str, str],
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    url = shared.aiml.url if isinstance(shared, Shared) else shared.url
    body = {"task": task, "engine": "onnx", "model_name": model, "data": data}
    return httpx.post(f"{url}/inference/infer", json=body, headers=headers, timeout=120)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed")
def test_speech_is_found_between_silences(models: Shared, tmp_path: Path) -> None:
    wav = speak("The meeting starts at nine in the morning.", tmp_path / "s.wav")
    with wave.open(str(wav)) as w:
        rate, speech = w.getframerate(), w.readframes(w.getnframes())
    gap = b"\0\0" * rate * 2  # two seconds of silence each side
    padded = tmp_path / "padded.wav"
    with wave.open(str(padded), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(gap + speech + gap)
    answer = _infer(models, "vad", "silero-vad", {"audio": _b64(padded.read_bytes())})
    assert answer.status_code == 200, answer.text
    segments = answer.json()["result"]["segments"]
    assert segments, answer.text
    spoken_s = len(speech) / 2 / rate
    assert 1.7 <= segments[0]["start"] <= 2.5  # speech begins after the two silent seconds
    assert 2.0 + spoken_s - 0.8 <= segments[-1]["end"] <= 2.0 + spoken_s + 0.3
    assert all(0.5 <= s["probability"] <= 1.0 for s in segments)
    silent = _infer(models, "vad", "silero-vad", {"audio": _b64(silence_wav(3.0))})
    assert silent.json()["result"]["segments"] == []


def test_text_in_images_is_read_back(models: Shared) -> None:
    for font, size, rotate in [("DejaVuSans", 32, 0), ("DejaVuSerif", 28, 0),
                               ("DejaVuSansMono", 36, 0), ("DejaVuSans", 32, 8)]:  # fmt: skip
        image = text_image(LINES, font=font, size=size, rotate=rotate)
        answer = _infer(models, "ocr", "pp-ocrv4", {"image": _b64(_png(image))})
        assert answer.status_code == 200, answer.text
        result = answer.json()["result"]
        assert char_error_rate("\n".join(LINES), result["text"]) < 0.10, (font, result["text"])
        line = result["lines"][0]
        assert len(line["box"]) == 4 and 0.5 < line["confidence"] <= 1.0
    blank = _infer(models, "ocr", "pp-ocrv4", {"image": _b64(_png(Image.new("RGB", (200, 80))))})
    assert blank.json()["result"] == {"text": "", "lines": []}
    assert _infer(models, "ocr", "pp-ocrv4", {"image": _b64(b"not an image")}).status_code == 422


def test_pdfs_are_read_from_their_text_layer_or_by_ocr(models: Shared) -> None:
    typed = text_pdf(["First page of the typed report.", "Second page: totals and notes."])
    answer = _infer(models, "document-analysis", "pp-docs", {"document": _b64(typed)})
    assert answer.status_code == 200, answer.text
    pages = answer.json()["result"]["pages"]
    assert [(p["page"], p["method"]) for p in pages] == [(1, "text"), (2, "text")]
    assert pages[1]["text"] == "Second page: totals and notes."
    scanned = scanned_pdf([[LINES[0]], [LINES[1]], ["Signed by the finance team"]])
    answer = _infer(models, "document-analysis", "pp-docs", {"document": _b64(scanned)})
    assert answer.status_code == 200, answer.text
    result = answer.json()["result"]
    assert result["page_count"] == 3 and {p["method"] for p in result["pages"]} == {"ocr"}
    expected = [LINES[0], LINES[1], "Signed by the finance team"]
    for page, text in zip(result["pages"], expected, strict=True):
        assert char_error_rate(text, page["text"]) < 0.10, page["text"]
    broken = _infer(models, "document-analysis", "pp-docs", {"document": _b64(b"%PDF-1.4 no")})
    assert broken.status_code == 422 and broken.json()["error"]["param"] == "document"


def test_image_captioning_runs_on_a_vision_model(shared: Shared) -> None:
    shared.registry.register("captioner", "qwen2:0.5b", task="vlm")  # vision, on the stand-in
    body = {"task": "image-captioning", "engine": "ollama", "model_name": "captioner",
            "data": {"image": _b64(_png(text_image(["hello"])))}}  # fmt: skip
    answer = httpx.post(f"{shared.aiml.url}/inference/infer", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["result"]["caption"]
    sent = shared.ollama.state.received[-1][1]
    assert sent["images"] and "describes this image" in sent["prompt"]


def test_other_earlier_tasks_are_refused_by_name(shared: Shared) -> None:
    for task in ("audio-classification", "video-analysis", "scene-detection", "video-summary"):
        body = {"task": task, "engine": "onnx", "model_name": "x", "data": {}}
        answer = httpx.post(f"{shared.aiml.url}/inference/infer", json=body, timeout=30)
        assert answer.status_code == 422, answer.text
        message = answer.json()["error"]["message"]
        assert f"{task!r} is not served" in message and "asr" in message and "ocr" in message
    served = httpx.get(f"{shared.aiml.url}/inference/supported-tasks").json()["tasks"]
    assert served["asr"] == ["whisper"] and served["vad"] == ["onnx"]
    assert served["document-analysis"] == ["onnx"] and "ollama" in served["image-captioning"]


# -- media bombs and deadlines (issue 17) ---------------------------------------------------

#: The bounded aiml's pixel limit and DPI: an A4 page at 100 dpi (827 x 1170) fits.
PIXELS, DPI = 1_000_000, 100


@pytest.fixture(scope="module")
def bounded(models: Shared, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAiml]:
    """A second aiml on the same registry, OCR only, with a small pixel limit (cheap bombs)
    and its OCR model loaded (so a short deadline is not spent loading it)."""
    folder = tmp_path_factory.mktemp("bounded-aiml")
    aiml = launch_aiml(folder, models.registry, models.ollama, engines="onnx",
                       max_image_pixels=PIXELS, document_dpi=DPI)  # fmt: skip
    warm = _infer(aiml, "ocr", "pp-ocrv4", {"image": _b64(_png(text_image(["warm"])))})
    assert warm.status_code == 200, warm.text
    yield aiml
    aiml.server.stop()


def test_a_page_too_large_to_render_is_shrunk_to_the_pixel_limit_or_refused(
    models: Shared, bounded: RunningAiml
) -> None:
    # A 20 x 20 inch scan (poster-sized), its text near the bottom right: at 100 dpi it
    # would be 2000 x 2000 pixels, so it is rendered at 50 dpi, 1000 x 1000 (the limit).
    poster = scanned_pdf([[LINES[0]]], size=24, page_size=(500, 500), dpi=25, at=(40, 400))
    answer = _infer(bounded, "document-analysis", "pp-ocrv4", {"document": _b64(poster)})
    assert answer.status_code == 200, answer.text
    page = answer.json()["result"]["pages"][0]
    assert page["method"] == "ocr" and page["dpi"] == 50
    corners = [point for line in page["lines"] for point in line["box"]]
    assert corners and max(max(x, y) for x, y in corners) <= 1000  # within the rendered page
    assert max(y for _, y in corners) > 800  # the text really is at the bottom
    assert char_error_rate(LINES[0], page["text"]) < 0.15, page["text"]
    # A page too large even at 36 dpi (30 x 30 inches: 1080 x 1080 > 10^6 pixels) is a
    # 413 naming it, before anything is rendered.
    pdf = scanned_pdf([["first"], ["second"]], page_size=(400, 300), dpi=100)
    two = _infer(bounded, "document-analysis", "pp-ocrv4", {"document": _b64(pdf)})
    assert two.status_code == 200 and [p["dpi"] for p in two.json()["result"]["pages"]] == [
        DPI,
        DPI,
    ]
    huge = _infer(bounded, "document-analysis", "pp-ocrv4",
                  {"document": _b64(giant_page_pdf(30, 30))})  # fmt: skip
    assert huge.status_code == 413, huge.text
    error = huge.json()["error"]
    assert error["code"] == "payload_too_large" and error["param"] == "document"
    assert "page 1 is 30 x 30 inches" in error["message"]
    # The 200-byte bomb, 200 x 200 inches, under the default limit (40 million
    # pixels): refused the same way (before the fix: 200 after 45 s, 12 GB).
    bomb = _infer(models, "document-analysis", "pp-docs",
                  {"document": _b64(giant_page_pdf(200, 200))})  # fmt: skip
    assert bomb.status_code == 413 and "page 1 is 200 x 200" in bomb.json()["error"]["message"]


def test_an_image_past_the_pixel_limit_is_a_413(models: Shared) -> None:
    # 180 million pixels, past Pillow's own bomb limit (2 x 89.5 million), ~20 kB as a PNG.
    blank = Image.new("1", (15_000, 12_000), 1)
    out = io.BytesIO()
    blank.save(out, format="PNG")
    del blank
    answer = _infer(models, "ocr", "pp-ocrv4", {"image": _b64(out.getvalue())})
    assert answer.status_code == 413, answer.text
    assert answer.json()["error"]["code"] == "payload_too_large"
    assert "AIML_MAX_IMAGE_PIXELS" in answer.json()["error"]["message"]


class _OcrGate:
    """Records each image that reaches RapidOCR (by its size) and holds the first one in
    the worker thread until released: the test decides when a page is done."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from rapidocr_onnxruntime import RapidOCR

        self.seen: list[tuple[int, int]] = []
        self.first_in = threading.Event()
        self.release = threading.Event()
        original: Callable[..., Any] = RapidOCR.__call__

        def held(ocr: Any, image: Any, *args: Any, **kwargs: Any) -> Any:
            shape = getattr(image, "shape", None)  # a rendered page's pixels, or a PIL image
            self.seen.append((shape[1], shape[0]) if shape is not None else image.size)
            if len(self.seen) == 1:
                self.first_in.set()
                assert self.release.wait(30), "the test never released the first image"
            return original(ocr, image, *args, **kwargs)

        monkeypatch.setattr(RapidOCR, "__call__", held)


@pytest.fixture
def ocr_gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[_OcrGate]:
    gate = _OcrGate(monkeypatch)
    yield gate
    gate.release.set()  # a failed test leaves no thread held


class _PdfOpens:
    """Counts the PDFs pdfium parses and the ones closed again."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import pypdfium2

        self.opened = 0
        self.closed = 0
        counts = self

        class Counted(pypdfium2.PdfDocument):  # type: ignore[misc]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                counts.opened += 1

            def close(self) -> None:
                counts.closed += 1
                super().close()

        monkeypatch.setattr(pypdfium2, "PdfDocument", Counted)


@pytest.fixture
def pdf_opens(monkeypatch: pytest.MonkeyPatch) -> _PdfOpens:
    return _PdfOpens(monkeypatch)


def _wait_for(condition: Callable[[], bool], what: str, within_s: float = 20.0) -> None:
    """Poll ``condition`` (each poll a request to aiml) until it holds."""
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.02)


def _in_flight(aiml: RunningAiml) -> int:
    text = httpx.get(f"{aiml.url}/metrics", timeout=10).text
    found = re.search(r'^aiml_requests_in_flight\{engine="onnx"\} (\S+)$', text, re.M)
    assert found, text
    return int(float(found.group(1)))


def _in_use(aiml: RunningAiml) -> int:
    models = httpx.get(f"{aiml.url}/inference/loaded", timeout=10).json()["models"]
    return sum(m["in_use"] for m in models if m["registry_name"] == "pp-ocrv4")


# Three small scanned pages (4 x 3 inches: 400 x 300 pixels at 100 dpi) and a small image.
PAGE = (400, 300)
SMALL = ["Total due: 1,250.00 EUR"]


def test_a_document_past_its_deadline_stops_at_the_next_page_and_counts_until_then(
    bounded: RunningAiml, ocr_gate: _OcrGate, pdf_opens: _PdfOpens
) -> None:
    gate = ocr_gate
    pdf = scanned_pdf([["one"], ["two"], ["three"]], page_size=(600, 450), dpi=150)
    with ThreadPoolExecutor(2) as pool:
        late = pool.submit(_infer, bounded, "document-analysis", "pp-ocrv4",
                           {"document": _b64(pdf)}, {"X-Request-Timeout": "1"})  # fmt: skip
        assert gate.first_in.wait(30)  # page 1 is being read, and held there
        answer = late.result(timeout=30)  # the deadline passes while it is held
        assert answer.status_code == 504, answer.text
        # Answered, but its thread is still on page 1: still in flight, the model in use.
        assert _in_flight(bounded) == 1 and _in_use(bounded) == 1
        gate.release.set()
        _wait_for(lambda: _in_flight(bounded) == 0, "the 504'd request's slot came back")
        assert _in_use(bounded) == 0
        # Its document was parsed once, and closed although the request was cancelled.
        _wait_for(lambda: pdf_opens.closed == 1, "the cancelled request's PDF was closed")
        assert pdf_opens.opened == 1
        # The model is free, and the next OCR is the next thing it reads: no page 2 or 3.
        image = _png(text_image(SMALL))
        after = pool.submit(_infer, bounded, "ocr", "pp-ocrv4", {"image": _b64(image)})
        assert after.result(timeout=60).status_code == 200
    assert gate.seen == [PAGE, Image.open(io.BytesIO(image)).size]


def test_a_long_document_holds_another_requests_ocr_up_by_one_page_only(
    bounded: RunningAiml, ocr_gate: _OcrGate, pdf_opens: _PdfOpens
) -> None:
    gate = ocr_gate
    pdf = scanned_pdf([["one"], ["two"], ["three"]], page_size=(600, 450), dpi=150)
    image = _png(text_image(SMALL))
    with ThreadPoolExecutor(2) as pool:
        document = pool.submit(_infer, bounded, "document-analysis", "pp-ocrv4",
                               {"document": _b64(pdf)})  # fmt: skip
        assert gate.first_in.wait(30)  # page 1 is being read, and held there
        small = pool.submit(_infer, bounded, "ocr", "pp-ocrv4", {"image": _b64(image)})
        # Its lease taken, the small request waits on the model's lock (no await between).
        _wait_for(lambda: _in_use(bounded) == 2, "the small OCR queued on the model")
        gate.release.set()
        assert small.result(timeout=60).status_code == 200
        assert document.result(timeout=60).json()["result"]["page_count"] == 3
    # Read between page 1 and page 2, not after the whole document.
    assert gate.seen == [PAGE, Image.open(io.BytesIO(image)).size, PAGE, PAGE]
    # Parsed once for its three pages (it was once per page, plus once to count them).
    assert (pdf_opens.opened, pdf_opens.closed) == (1, 1)
