"""Speech to text in this process: Whisper models in CTranslate2 format, on faster-whisper.

faster-whisper is the fastest CPU runtime for Whisper (int8 weights through CTranslate2).
Audio is decoded by :mod:`.audio` (bounded, 400/413 on bad or long input), then
transcribed with voice activity detection on, so silence gives no text (without it Whisper
invents "You") and long audio goes window by window. Segments come out one by one from the
worker thread: a client that leaves stops the transcription at the next segment.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from aiml.errors import InvalidRequest, ModelLoadFailed
from aiml.types import (
    ResolvedModel,
    Task,
    TranscribeOptions,
    Transcript,
    TranscriptSegment,
    Word,
)

from .audio import RATE, decode
from .local import MediaEngine
from .pool import Loaded

__all__ = ["WhisperEngine"]


class WhisperEngine(MediaEngine):
    """Registered CTranslate2 Whisper folders (``model.bin``, ``vocabulary``, ``config.json``)."""

    name = "whisper"
    tasks = frozenset({Task.ASR})

    def __init__(
        self, artifacts: Any, pool: Any, *, threads: int, beam_size: int, max_audio_s: float
    ) -> None:
        super().__init__(artifacts, pool)
        self._threads = threads
        self._beam_size = beam_size
        self._max_audio_s = max_audio_s

    def estimate_bytes(self, model: ResolvedModel) -> int:
        weights = (self.folder(model) / "model.bin").stat().st_size
        return weights + (96 << 20)  # decoder buffers and the features of one window

    def load(self, model: ResolvedModel) -> Loaded:
        from faster_whisper import WhisperModel

        try:
            loaded = WhisperModel(
                str(self.folder(model)),
                device="cpu",
                compute_type="int8",
                cpu_threads=self._threads,
                local_files_only=True,
            )
        except (OSError, RuntimeError, ValueError) as exc:
            raise ModelLoadFailed(f"{model.engine_model}: {exc}") from exc
        return Loaded(handle=loaded, size_bytes=self.estimate_bytes(model))

    async def transcribe(
        self, model: ResolvedModel, audio: bytes, options: TranscribeOptions
    ) -> Transcript:
        lease = await self.acquire(model)
        beam, most = self._beam_size, self._max_audio_s
        pieces: list[Any] = []
        run = lambda m: _transcribe(m, audio, options, beam, most)  # noqa: E731
        async for piece in self.exclusive(lease, run):
            pieces.append(piece)
        language, duration = pieces[0]
        segments = tuple(pieces[1:])
        text = " ".join(s.text for s in segments if s.text)
        return Transcript(text=text, language=language, duration_s=duration, segments=segments)


def _transcribe(
    model: Any, audio: bytes, options: TranscribeOptions, beam_size: int, max_seconds: float
) -> Iterator[Any]:
    """(language, duration), then each segment as it is decoded (in the worker thread)."""
    samples = decode(audio, max_seconds=max_seconds)
    languages = model.supported_languages
    if options.language is not None and options.language not in languages:
        raise InvalidRequest(
            f"language {options.language!r} is not one this model knows "
            f"({', '.join(languages[:8])}{', ...' if len(languages) > 8 else ''})",
            param="language",
        )
    segments, info = model.transcribe(
        samples,
        language=options.language or (None if model.model.is_multilingual else "en"),
        initial_prompt=options.prompt,
        temperature=options.temperature,
        word_timestamps=options.words,
        vad_filter=True,
        beam_size=beam_size,
    )
    yield info.language, len(samples) / RATE
    try:
        for segment in segments:
            yield TranscriptSegment(
                start=round(float(segment.start), 3),
                end=round(float(segment.end), 3),
                text=segment.text.strip(),
                words=tuple(_word(w) for w in segment.words or ()),
                avg_logprob=float(segment.avg_logprob),
                no_speech_prob=float(segment.no_speech_prob),
            )
    finally:
        segments.close()  # the client left: stop decoding windows


def _word(word: Any) -> Word:
    return Word(
        start=round(float(word.start), 3),
        end=round(float(word.end), 3),
        word=word.word.strip(),
        probability=round(float(word.probability), 4),
    )
