"""Audio in any format FFmpeg reads (WAV, MP3, FLAC, OGG, ...) to 16 kHz mono float32, bounded.

Decoded here with PyAV (FFmpeg's libraries, installed with faster-whisper) rather than by
faster-whisper's ``decode_audio``, because that one has no length limit and lets some bad
input through: a PNG raises ``IndexError`` inside it, and a damaged MP3 is silently
transcribed in part. Here anything that is not audio is a 400 and audio longer than the
limit a 413, found while decoding, so memory stays within ``max_seconds`` of samples.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import numpy as np

from aiml.errors import InvalidRequest, PayloadTooLarge

__all__ = ["RATE", "decode"]

RATE = 16_000  # what whisper and silero-vad take


def decode(audio: bytes, *, max_seconds: float, param: str = "audio") -> np.ndarray[Any, Any]:
    """Mono float32 samples at :data:`RATE`; 400 for anything that is not audio, 413 past
    ``max_seconds``."""
    import av

    limit = int(max_seconds * RATE)
    out = np.empty(limit, dtype=np.float32)  # pages are touched only as they fill
    filled = 0
    try:
        with av.open(io.BytesIO(audio), mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise InvalidRequest("the upload has no audio stream", param=param)
            stated = container.duration  # from the header, when it says (None for streams)
            if stated is not None and stated / av.time_base > max_seconds + 1:
                raise _too_long(max_seconds, param)
            resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE)
            group = 10 * (container.streams.audio[0].rate or RATE)
            for frame in _grouped(container, group):
                for chunk in resampler.resample(frame):
                    samples = chunk.to_ndarray().reshape(-1)
                    if filled + samples.size > limit:
                        raise _too_long(max_seconds, param)
                    out[filled : filled + samples.size] = samples
                    filled += samples.size
    except av.error.FFmpegError as exc:
        raise InvalidRequest(f"the upload is not audio aiml can read ({exc})", param=param) from exc
    if filled == 0:
        raise InvalidRequest("the upload holds no audio samples", param=param)
    return out[:filled].copy()


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
