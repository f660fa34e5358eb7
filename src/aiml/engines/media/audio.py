"""Audio in any format FFmpeg reads (WAV, MP3, FLAC, OGG, ...) to 16 kHz mono float32, bounded.

Decoded here with PyAV (FFmpeg's libraries, installed with faster-whisper) rather than by
faster-whisper's ``decode_audio``, because that one has no length limit and lets some bad
input through: a PNG raises ``IndexError`` inside it, and a damaged MP3 is silently
transcribed in part. Here anything that is not audio is a 400 and audio longer than the
limit a 413, found while decoding, so memory stays within ``max_seconds`` of samples.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from aiml.errors import InvalidRequest, PayloadTooLarge

__all__ = ["RATE", "decode_chunks"]

RATE = 16_000  # what whisper and silero-vad take


def decode_chunks(
    audio: bytes | str | os.PathLike[str],
    *,
    max_seconds: float,
    chunk_s: float = 60.0,
    param: str = "audio",
) -> Iterator[np.ndarray[Any, Any]]:
    """The audio in pieces of about ``chunk_s`` seconds, each cut at the quietest 0.1 s of
    its last 10 s (its second half, for pieces under 20 s): between words, not through one;
    so a long recording is handled piece by piece in bounded memory. 400 for anything that
    is not audio (found before the first piece), 413 once past ``max_seconds``. ``audio`` is
    the file's bytes or its path (a video's audio track, from a large upload on disk)."""
    import av

    chunk = int(chunk_s * RATE)
    span = min(10 * RATE, chunk // 2)  # where a cut may fall: the end of each piece
    pending: list[np.ndarray[Any, Any]] = []
    held = total = 0
    try:
        source = io.BytesIO(audio) if isinstance(audio, bytes) else os.fspath(audio)
        with av.open(source, mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise InvalidRequest("the upload has no audio stream", param=param)
            stated = container.duration  # from the header, when it says (None for streams)
            if stated is not None and stated / av.time_base > max_seconds + 1:
                raise _too_long(max_seconds, param)
            resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE)
            group = 10 * (container.streams.audio[0].rate or RATE)
            for frame in _grouped(container, group):
                for piece in resampler.resample(frame):
                    samples = piece.to_ndarray().reshape(-1)
                    total += samples.size
                    if total > max_seconds * RATE:
                        raise _too_long(max_seconds, param)
                    pending.append(samples)
                    held += samples.size
                    if held >= chunk + span:
                        joined = np.concatenate(pending)
                        cut = _quiet_cut(joined, chunk, span)
                        yield joined[:cut]
                        pending, held = [joined[cut:]], joined.size - cut
    except av.error.FFmpegError as exc:
        raise InvalidRequest(f"the upload is not audio aiml can read ({exc})", param=param) from exc
    if total == 0:
        raise InvalidRequest("the upload holds no audio samples", param=param)
    if held:
        yield np.concatenate(pending)


def _quiet_cut(samples: np.ndarray[Any, Any], around: int, span: int) -> int:
    """The start of the quietest 0.1 s frame in the ``span`` samples before ``around``."""
    frame = RATE // 10
    window = samples[around - span : around]
    energy = np.square(window[: window.size // frame * frame]).reshape(-1, frame).sum(axis=1)
    return around - span + int(np.argmin(energy)) * frame


def _grouped(container: Any, group: int) -> Iterator[Any]:
    """Decoded frames regrouped into ~``group`` samples (resampling many small frames costs
    twice as much), damaged packets skipped; a final ``None`` flushes the resampler."""
    import av

    fifo = av.AudioFifo()
    decoded = container.decode(container.streams.audio[0])
    while True:
        try:
            frame = next(decoded)
        except StopIteration:
            break
        except av.error.InvalidDataError:
            continue  # one damaged packet: the rest of the audio is still good
        frame.pts = None  # the fifo would check timestamps otherwise
        fifo.write(frame)
        if fifo.samples >= group:
            yield fifo.read()
    if fifo.samples:
        yield fifo.read()
    yield None


def _too_long(max_seconds: float, param: str) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the audio is longer than {max_seconds:g} s (AIML_MAX_AUDIO_S)", param=param
    )
