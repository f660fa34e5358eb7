"""Voice activity (Silero VAD on ONNX Runtime), OCR (PP-OCRv4 through RapidOCR) and PDF
document analysis, on the models the PyPI packages ship, registered like every other model;
image captioning over the vlm path; the earlier system's other tasks refused by name."""

from __future__ import annotations

import base64
import io
import wave
from pathlib import Path

import httpx
import pytest
from PIL import Image

from aiml.bundled import BUNDLED
from tests.conftest import Shared
from tests.fakes.documents import char_error_rate, scanned_pdf, text_image, text_pdf
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


def _infer(shared: Shared, task: str, model: str, data: dict[str, str]) -> httpx.Response:
    body = {"task": task, "engine": "onnx", "model_name": model, "data": data}
    return httpx.post(f"{shared.aiml.url}/inference/infer", json=body, timeout=120)


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
