"""Video in any container FFmpeg reads (MP4, WebM, MKV, MOV, ...), decoded by PyAV, bounded.

Frames are sampled, not all kept: :func:`sample_frames` yields one small RGB frame at a
time at about ``fps`` frames per second of video, so memory is flat in the video's length
(one decoded frame, plus what FFmpeg buffers for its decoder). Every frame is still decoded
(a frame between two kept ones may be a reference for the next); the ones not kept are
dropped before they are converted to RGB and scaled, which is most of the cost saved.
Anything that is not a video is an :class:`InvalidRequest` (422), found before the first
frame; a video longer than ``max_seconds`` a 413, at once when its header says so and while
decoding otherwise; a video that stops more than :data:`_SHORTFALL_S` short of the duration
its header declares (a truncated file) a 422 after the frames that could be read. A file
with no declared duration (a stream) that is cut short just ends, and an MP4 whose index is
at its end (FFmpeg's default) is refused whole when cut, at the first frame.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from aiml.engines.media.audio import decode_chunks
from aiml.errors import InvalidRequest, PayloadTooLarge

__all__ = ["Source", "VideoInfo", "audio_of", "probe", "sample_frames"]

#: Bytes of a file in memory, or a path to it on disk (a large upload written as it came).
Source = bytes | str | os.PathLike[str]
#: How far short of its declared duration a video may end and still count as whole (an
#: MKV's duration is its longest stream's, often the audio; and the last frame lasts).
_SHORTFALL_S = 1.0


@dataclass(frozen=True)
class VideoInfo:
    """What a container says about its first video stream."""

    duration_s: float | None  # None when the container does not say (a live stream)
    width: int
    height: int
    fps: float | None
    codec: str
    has_audio: bool


def probe(source: Source, *, param: str = "video") -> VideoInfo:
    """The video's size, rate, codec and declared duration, from its header (422 if it is
    not a video)."""
    import av

    try:
        with _open(source) as container:
            stream = _video_stream(container, param)
            return VideoInfo(
                duration_s=_declared(container, stream),
                width=int(stream.codec_context.width),
                height=int(stream.codec_context.height),
                fps=float(stream.average_rate) if stream.average_rate else None,
                codec=str(stream.codec_context.name),
                has_audio=bool(container.streams.audio),
            )
    except av.error.FFmpegError as exc:
        raise _not_video(exc, param) from exc


def sample_frames(
    source: Source,
    *,
    max_seconds: float,
    fps: float = 10.0,
    max_side: int = 640,
    param: str = "video",
) -> Iterator[tuple[float, np.ndarray[Any, Any]]]:
    """``(seconds from the start, an RGB uint8 array of height x width x 3)`` at about
    ``fps`` frames per second of video (every frame when the video has fewer), each scaled
    so its longer side is at most ``max_side``. 422 for what is not a video (before the
    first frame) and for a video cut short (after its last readable frame), 413 past
    ``max_seconds``."""
    import av

    step = 1.0 / fps
    taken = 0
    last = -1.0
    try:
        with _open(source) as container:
            stream = _video_stream(container, param)
            declared = _declared(container, stream)
            if declared is not None and declared > max_seconds + _SHORTFALL_S:
                raise _too_long(max_seconds, param)
            stream.thread_type = "AUTO"  # frame threads: several frames decoded at once
            start = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
            size: tuple[int, int] | None = None
            due = 0.0  # the time of the next frame to keep
            for frame in _frames(container, stream, param):
                at = float(frame.time) - start if frame.time is not None else taken * step
                last = max(last, at)
                if at > max_seconds:
                    raise _too_long(max_seconds, param)
                if at < due - step / 4:  # a quarter step: timestamps rounded to ms (MKV)
                    continue  # decoded (it may be a reference) but never converted
                due = max(due + step, at + step / 2)  # no burst after a gap in the stream
                if size is None:
                    size = _scaled(frame.width, frame.height, max_side)
                rgb = frame.reformat(width=size[0], height=size[1], format="rgb24")
                taken += 1
                yield at, rgb.to_ndarray()
    except av.error.FFmpegError as exc:
        raise _not_video(exc, param) from exc
    if taken == 0:
        raise InvalidRequest("the upload holds no video frames", param=param)
    if declared is not None and last + _SHORTFALL_S < declared:
        raise InvalidRequest(
            f"the video ends at {last:.1f} s of the {declared:.1f} s it declares "
            "(a truncated or damaged file)",
            param=param,
        )


def audio_of(source: Source, *, max_seconds: float, param: str = "video") -> np.ndarray[Any, Any]:
    """The video's audio track as 16 kHz mono float32 (empty when it has none), decoded by
    :func:`aiml.engines.media.audio.decode_chunks`: 413 past ``max_seconds``, so at most
    ``max_seconds`` x 64 KB in memory."""
    if not probe(source, param=param).has_audio:
        return np.zeros(0, dtype=np.float32)
    pieces = list(decode_chunks(source, max_seconds=max_seconds, param=param))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)


def _open(source: Source) -> Any:
    import av

    where = io.BytesIO(source) if isinstance(source, bytes) else os.fspath(source)
    return av.open(where, mode="r", metadata_errors="ignore")


def _video_stream(container: Any, param: str) -> Any:
    streams = [s for s in container.streams.video if s.codec_context.width]
    if not streams:
        raise InvalidRequest("the upload has no video stream", param=param)
    stream = streams[0]
    # A still image opens as a one-frame "video" (image2 / png_pipe / jpeg_pipe demuxers).
    if container.format.name.endswith("_pipe") or container.format.name == "image2":
        raise InvalidRequest("the upload is an image, not a video", param=param)
    return stream


def _declared(container: Any, stream: Any) -> float | None:
    """The video stream's own duration where the container keeps one (MP4, MOV), else the
    container's (MKV, WebM: the longest stream's), else None."""
    import av

    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return None if container.duration is None else container.duration / av.time_base


def _frames(container: Any, stream: Any, param: str) -> Iterator[Any]:
    """The decoded frames of ``stream``; a damaged packet past the first frame ends the
    video there (the caller's duration check turns that into a 422)."""
    import av

    decoded = container.decode(stream)
    count = 0
    while True:
        try:
            frame = next(decoded)
        except StopIteration:
            return
        except av.error.InvalidDataError as exc:
            if count == 0:
                raise _not_video(exc, param) from exc
            return
        count += 1
        yield frame


def _scaled(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The size within ``max_side`` (even numbers: some scalers and encoders want them)."""
    scale = min(1.0, max_side / max(width, height))
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def _not_video(exc: Exception, param: str) -> InvalidRequest:
    return InvalidRequest(f"the upload is not a video aiml can read ({exc})", param=param)


def _too_long(max_seconds: float, param: str) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the video is longer than {max_seconds:g} s (AIML_MAX_VIDEO_S)", param=param
    )
