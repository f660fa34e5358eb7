"""Speech to text in this process: Whisper models in CTranslate2 format, on faster-whisper.

faster-whisper is the fastest CPU runtime for Whisper (int8 weights through CTranslate2).
Audio is decoded by :mod:`.audio` (bounded, 400/413 on bad or long input), then
transcribed with voice activity detection on, so silence gives no text (without it Whisper
invents "You") and long audio goes window by window. Segments come out one by one from the
worker thread: a client that leaves stops the transcription at the next segment.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

from aiml.engines.local import MediaEngine
from aiml.engines.pool import Loaded
from aiml.errors import InvalidRequest, ModelLoadFailed
from aiml.types import (
    Generation,
    GenerationChunk,
    ResolvedModel,
    Task,
    TranscribeOptions,
    Transcript,
    TranscriptSegment,
    Word,
)

from .audio import RATE, decode_chunks

__all__ = ["WhisperEngine", "transcribe_pieces"]


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

    async def stream_transcribe(
        self, model: ResolvedModel, audio: bytes, options: TranscribeOptions
    ) -> AsyncIterator[GenerationChunk]:
        lease = await self.acquire(model)
        beam, most = self._beam_size, self._max_audio_s
        segments: list[TranscriptSegment] = []
        run = lambda m: transcribe_pieces(m, audio, options, beam_size=beam, max_seconds=most)  # noqa: E731
        async with contextlib.aclosing(self.exclusive(lease, run)) as pieces:
            async for piece in pieces:
                if isinstance(piece, TranscriptSegment):
                    yield GenerationChunk(text=(" " if segments else "") + piece.text)
                    segments.append(piece)
                    continue
                language, duration = piece  # the end: what was heard, and for how long
                text = " ".join(s.text for s in segments if s.text)
                transcript = Transcript(text, language, duration, tuple(segments))
                final = Generation(text=text, finish_reason="stop",
                                   engine_metadata={"transcript": transcript})  # fmt: skip
                yield GenerationChunk(text="", done=True, final=final)


def transcribe_pieces(
    model: Any,
    audio: bytes,
    options: TranscribeOptions,
    *,
    beam_size: int,
    max_seconds: float,
    chunk_s: float = 60.0,
) -> Iterator[TranscriptSegment | tuple[str, float]]:
    """Each segment as it is decoded, then (language, seconds of audio); in the worker
    thread. Long audio goes ``chunk_s`` at a time (cut between words), so memory stays flat
    however long the recording: faster-whisper computes the features of all the audio it is
    given at once (a 10-minute piece peaked ~0.7 GiB over the model, bench/speech_ocr.py)."""
    languages = model.supported_languages
    if options.language is not None and options.language not in languages:
        raise InvalidRequest(
            f"language {options.language!r} is not one this model knows "
            f"({', '.join(languages[:8])}{', ...' if len(languages) > 8 else ''})",
            param="language",
        )
    language = options.language or (None if model.model.is_multilingual else "en")
    offset = 0.0
    for samples in decode_chunks(audio, max_seconds=max_seconds, chunk_s=chunk_s):
        segments, info = model.transcribe(
            samples,
            language=language,
            initial_prompt=options.prompt,
            temperature=options.temperature,
            word_timestamps=options.words,
            vad_filter=True,
            beam_size=beam_size,
        )
        language = info.language  # detected on the first piece, kept for the rest
        try:
            for segment in segments:
                yield TranscriptSegment(
                    start=round(offset + float(segment.start), 3),
                    end=round(offset + float(segment.end), 3),
                    text=segment.text.strip(),
                    words=tuple(_word(w, offset) for w in segment.words or ()),
                    avg_logprob=float(segment.avg_logprob),
                    no_speech_prob=float(segment.no_speech_prob),
                )
        finally:
            segments.close()  # the client left: stop decoding windows
        offset += samples.size / RATE
    yield language or "en", offset


def _word(word: Any, offset: float) -> Word:
    return Word(
        start=round(offset + float(word.start), 3),
        end=round(offset + float(word.end), 3),
        word=word.word.strip(),
        probability=round(float(word.probability), 4),
    )
