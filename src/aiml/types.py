"""Typed domain objects passed between the layers.

Wire formats (pydantic) stay in ``api/``; inside the service everything is one of these.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

__all__ = [
    "ChatMessage",
    "Embeddings",
    "Generation",
    "GenerationChunk",
    "Label",
    "ModelDetails",
    "ModelRef",
    "OutputFormat",
    "RegistryVersion",
    "ResolvedModel",
    "SamplingParams",
    "Source",
    "Task",
    "Tool",
    "ToolCall",
]


class Task(StrEnum):
    """The inference tasks the service knows."""

    TEXT_GENERATION = "text-generation"
    CHAT = "chat"
    EMBEDDINGS = "embeddings"
    VLM = "vlm"
    TEXT_CLASSIFICATION = "text-classification"
    ASR = "asr"  # speech to text (the earlier system's "audio-transcription")
    VAD = "vad"  # voice activity: where the speech is
    OCR = "ocr"  # the text lines of an image
    DOCUMENT_ANALYSIS = "document-analysis"  # a PDF's text, page by page (OCR where scanned)
    IMAGE_CAPTIONING = "image-captioning"  # a caption, on a model with vision


#: What servers of language models (Ollama, OpenAI-compatible ones) do.
LANGUAGE_SERVER_TASKS = frozenset(
    {Task.TEXT_GENERATION, Task.CHAT, Task.EMBEDDINGS, Task.VLM, Task.IMAGE_CAPTIONING}
)


class Source(StrEnum):
    """Where a model reference was resolved: the registry, or passed through to the engine."""

    REGISTRY = "registry"
    DIRECT = "direct"


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A parsed model reference: ``name``, ``name@alias``, ``name/3`` or a ``models:/`` URI.

    ``version`` and ``alias`` are mutually exclusive; with neither, the reference means the
    latest registry version (or, when the registry does not know the name, the engine's own
    model of that name).
    """

    name: str
    version: int | None = None
    alias: str | None = None

    @property
    def pinned(self) -> bool:
        """A pinned version's resolution never changes, so it never expires."""
        return self.version is not None

    @property
    def registry_eligible(self) -> bool:
        """MLflow model names cannot contain ``/`` or ``:``; such names are engine names."""
        return "/" not in self.name and ":" not in self.name

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}/{self.version}"
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        return self.name


@dataclass(frozen=True, slots=True)
class RegistryVersion:
    """One model version as the registry holds it."""

    name: str
    version: int
    tags: Mapping[str, str]
    model_tags: Mapping[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    source: str | None = None
    #: The MLflow 3 logged model it was registered from, where it has one.
    logged_model: str | None = None

    def tag(self, key: str) -> str | None:
        """A version tag, falling back to the registered model's tag of the same key."""
        return self.tags.get(key) or self.model_tags.get(key)

    def merged_tags(self) -> dict[str, str]:
        """The registered model's tags overlaid by the version's."""
        return {**self.model_tags, **self.tags}


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    """What a reference resolved to: the engine's model name and where it came from."""

    engine: str
    engine_model: str
    source: Source
    registry_name: str | None = None
    registry_version: int | None = None
    declared_task: str | None = None
    #: The registry version's tags (the registered model's as fallback); empty when direct.
    tags: Mapping[str, str] = field(default_factory=dict)
    #: The version's MLflow 3 logged model, where it has one: its traces are linked to it.
    logged_model: str | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "engine_model": self.engine_model,
            "registry_name": self.registry_name,
            "registry_version": self.registry_version,
            "source": self.source.value,
        }


@dataclass(frozen=True, slots=True)
class OutputFormat:
    """The answer must be JSON: any JSON object (``schema`` None), or JSON valid against
    ``schema`` (a JSON Schema, as canonical JSON text so equal schemas are equal keys)."""

    schema: str | None = None
    name: str | None = None
    #: The request field it came from, named by a refusal (``response_format``, ``format``).
    param: str = "response_format"


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call: its name, what it does, its parameters' JSON schema
    (as JSON text)."""

    name: str
    description: str = ""
    parameters: str = '{"type": "object", "properties": {}}'


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call the model made: ``arguments`` is JSON text, as OpenAI carries it."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Engine-neutral generation options; each engine maps them to its own names."""

    #: A temperature below this decodes greedily: it samples as greedy decoding does, and a
    #: far smaller one overflows float32 logits divided by it into inf (a fuzzed 1.2e-38
    #: made transformers' sampling raise: a 500).
    GREEDY_BELOW: ClassVar[float] = 1e-4

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    repeat_penalty: float | None = None
    #: Generate ``max_tokens`` whatever end-of-generation token comes (vLLM's option;
    #: benchmarks use it so every request makes the same number of tokens).
    ignore_eos: bool = False
    #: Constrain the answer to JSON (structured outputs); None: free text.
    output_format: OutputFormat | None = None
    #: Functions the model may call, and whether it must: "auto", "none", "required", or
    #: the one function's name.
    tools: tuple[Tool, ...] = ()
    tool_choice: str = "auto"
    #: Fill in the middle: the prompt is the text before the gap, this the text after it.
    suffix: str | None = None

    def options(self) -> frozenset[str]:
        """The options here that not every engine honours (``Engine.extra_options``)."""
        wanted = {"ignore_eos"} if self.ignore_eos else set()
        if self.output_format is not None:
            wanted.add("output_format")
        if self.tools and self.tool_choice != "none":
            wanted.add("tools")
        if self.suffix is not None:
            wanted.add("suffix")
        return frozenset(wanted)


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str
    content: str
    images: tuple[bytes, ...] = ()
    #: An assistant turn's calls; a ``tool`` turn answers the call ``tool_call_id`` names.
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None


@dataclass(frozen=True, slots=True)
class Generation:
    """A finished generation with the counts engines report."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    engine_metadata: Mapping[str, Any] = field(default_factory=dict)
    #: Calls the model made (``finish_reason`` is then "tool_calls").
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True, slots=True)
class GenerationChunk:
    """One piece of a streamed generation; the last one has ``done`` and the final counts."""

    text: str
    done: bool = False
    final: Generation | None = None


@dataclass(frozen=True, slots=True)
class Embeddings:
    vectors: list[list[float]]
    prompt_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Label:
    label: str
    score: float


@dataclass(frozen=True, slots=True)
class ModelDetails:
    """What a model is and can do, as far as its engine can tell (Ollama's ``show``)."""

    family: str
    format: str = ""
    parameter_size: str = ""
    quantization: str = ""
    context_length: int | None = None
    template: str = ""
    #: Ollama's names: "completion", "tools", "insert" (fill-in-the-middle), "embedding",
    #: "vision"; and "chat" (it has a chat template), "classification".
    capabilities: tuple[str, ...] = ()
    #: The chat template renders the tools itself (it reads a ``tools`` variable).
    tools_in_template: bool = False
    #: An embedding model's vector size, when its files or its server say it.
    embedding_length: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "format": self.format,
            "parameter_size": self.parameter_size,
            "quantization": self.quantization,
            "context_length": self.context_length,
            "capabilities": list(self.capabilities),
            "tools_in_template": self.tools_in_template,
            "embedding_length": self.embedding_length,
        }


@dataclass(frozen=True, slots=True)
class Word:
    start: float
    end: float
    word: str
    probability: float


@dataclass(frozen=True, slots=True)
class TranscriptSegment:
    """A stretch of speech and its text; seconds from the start of the audio."""

    start: float
    end: float
    text: str
    words: tuple[Word, ...] = ()
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0


@dataclass(frozen=True, slots=True)
class TranscribeOptions:
    language: str | None = None
    prompt: str | None = None
    temperature: float = 0.0
    words: bool = False  # word timestamps


@dataclass(frozen=True, slots=True)
class Transcript:
    text: str
    language: str
    duration_s: float
    segments: tuple[TranscriptSegment, ...]


@dataclass(frozen=True, slots=True)
class SpeechSegment:
    """Speech found by voice activity detection: seconds, and the model's peak probability."""

    start: float
    end: float
    probability: float


@dataclass(frozen=True, slots=True)
class TextLine:
    """A line of text read from an image: its four corners (pixels), and how sure."""

    text: str
    box: tuple[tuple[float, float], ...]
    confidence: float


@dataclass(frozen=True, slots=True)
class DocumentPage:
    number: int  # from 1
    #: "text": the PDF's own text layer; "ocr": read from the rendered page.
    method: str
    text: str
    lines: tuple[TextLine, ...] = ()
    #: The resolution an OCR'd page was rendered at (its lines' boxes are in those pixels):
    #: AIML_DOCUMENT_DPI, or less for a page too large for AIML_MAX_IMAGE_PIXELS.
    dpi: int | None = None
