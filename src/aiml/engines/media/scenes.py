"""Scene boundaries by PySceneDetect's content or adaptive detector, fed frame by frame.

The frames come from :func:`aiml.engines.media.video.sample_frames` (RGB, small, one at a
time); each goes to the detector's public ``process_frame`` with a
:class:`scenedetect.FrameTimecode` in seconds, so a cut is placed at the time of the first
sampled frame of the new scene (within one sample interval of the real cut). No model is
needed. PySceneDetect's detectors convert frames with OpenCV (``cv2``), which it requires;
opencv-python is already installed here by rapidocr-onnxruntime.

Each scene's keyframe is its frame about :data:`SETTLE_S` after its start (its last frame
if it is shorter), kept as a JPEG: a few kilobytes per scene, the frames themselves never
held beyond the detector's lag (the content detector reports a cut on the frame itself,
the adaptive one ``window_width`` frames later), so memory is flat in the video's length.
"""

from __future__ import annotations

import io
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from aiml.errors import InvalidRequest

__all__ = ["SETTLE_S", "Scene", "detect_scenes"]

#: How far into a scene its keyframe is taken: past a cut's first, sometimes blended, frame.
SETTLE_S = 0.2
#: The adaptive detector's frames before and after each one it averages over (its default).
_WINDOW = 2

Detector = Literal["content", "adaptive"]


@dataclass(frozen=True)
class Scene:
    """One shot: from ``start_s`` to ``end_s``, and its keyframe (a JPEG) taken at
    ``keyframe_s``, the ``keyframe_index``-th sampled frame (from 0)."""

    start_s: float
    end_s: float
    keyframe_s: float
    keyframe_index: int
    keyframe_jpeg: bytes


def detect_scenes(
    frames: Iterable[tuple[float, np.ndarray[Any, Any]]],
    *,
    threshold: float | None = None,
    detector: Detector = "content",
    min_scene_s: float = 0.6,
    end_s: float | None = None,
    jpeg_quality: int = 85,
) -> list[Scene]:
    """The scenes of ``frames`` (``(seconds, RGB array)`` in time order), by the content
    detector (``threshold``: the mean HSV change of a cut, 27 by default) or the adaptive
    one (``threshold``: a frame's change over its neighbours' mean, 3 by default); no cut
    comes within ``min_scene_s`` of the previous one. The last scene ends at ``end_s`` (the
    video's length, when known) or one mean frame interval after the last frame."""
    # No stubs or py.typed marker shipped (0.7.2).
    from scenedetect import (  # type: ignore[import-untyped]
        AdaptiveDetector,
        ContentDetector,
        FrameTimecode,
    )
    from scenedetect.detector import FlashFilter  # type: ignore[import-untyped]

    scene_detector: Any
    if detector == "content":
        # SUPPRESS reports a cut on its own frame (MERGE may report one much later), so the
        # keyframe below needs only the last frame or two.
        scene_detector = ContentDetector(
            threshold=27.0 if threshold is None else threshold,
            min_scene_len=float(min_scene_s),
            filter_mode=FlashFilter.Mode.SUPPRESS,
        )
    elif detector == "adaptive":
        scene_detector = AdaptiveDetector(
            adaptive_threshold=3.0 if threshold is None else threshold,
            min_scene_len=float(min_scene_s),
            window_width=_WINDOW,
        )
    else:
        raise InvalidRequest(
            f"unknown scene detector {detector!r} (content or adaptive)", param="detector"
        )

    recent: deque[tuple[int, float, np.ndarray[Any, Any]]] = deque(maxlen=_WINDOW + 2)
    starts: list[float] = []
    keyframes: list[tuple[int, float, bytes]] = []
    rate: float | None = None
    index = -1
    at = 0.0
    for index, (at, rgb) in enumerate(frames):
        if index == 0:
            starts.append(at)
        recent.append((index, at, rgb))
        if rate is None and index >= 1:
            rate = 1.0 / max(at - recent[-2][1], 1e-3)
        timecode = FrameTimecode(timecode=float(at), fps=rate or 25.0)
        # The detectors convert BGR (OpenCV's order) to HSV; sample_frames gives RGB.
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        for cut in scene_detector.process_frame(timecode, bgr):
            starts.append(_time_of(cut, recent))
        while len(keyframes) < len(starts):
            if not _keyframe(starts, keyframes, recent, jpeg_quality, final=False):
                break
    if index < 0:
        return []
    for cut in scene_detector.post_process(FrameTimecode(timecode=float(at), fps=rate or 25.0)):
        starts.append(_time_of(cut, recent))
    if end_s is None:
        end_s = at + ((at - starts[0]) / index if index else 0.0)
    end = max(end_s, at)
    while len(keyframes) < len(starts):
        _keyframe(starts, keyframes, recent, jpeg_quality, final=True)
    bounds = [*starts[1:], end]
    return [
        Scene(
            start_s=round(start, 3),
            end_s=round(stop, 3),
            keyframe_s=round(key_at, 3),
            keyframe_index=key_index,
            keyframe_jpeg=jpeg,
        )
        for start, stop, (key_index, key_at, jpeg) in zip(starts, bounds, keyframes, strict=True)
    ]


def _time_of(cut: Any, recent: deque[tuple[int, float, np.ndarray[Any, Any]]]) -> float:
    """The sampled frame's own time for a cut the detector reports (it gives it back as the
    timecode it was given, in seconds)."""
    seconds = float(cut.seconds)
    return min((at for _, at, _ in recent), key=lambda at: abs(at - seconds), default=seconds)


def _keyframe(
    starts: list[float],
    keyframes: list[tuple[int, float, bytes]],
    recent: deque[tuple[int, float, np.ndarray[Any, Any]]],
    quality: int,
    *,
    final: bool,
) -> bool:
    """Take the keyframe of the first scene without one, once a frame :data:`SETTLE_S` into
    it has come (or the scene has ended: then its last frame, or at the video's end); False
    while it must wait for more frames."""
    scene = len(keyframes)
    start = starts[scene]
    stop = starts[scene + 1] if scene + 1 < len(starts) else None
    inside = [
        item for item in recent if item[1] >= start - 1e-6 and (stop is None or item[1] < stop)
    ]
    settled = [item for item in inside if item[1] >= start + SETTLE_S - 1e-6]
    if settled:
        chosen = settled[0]
    elif inside and (stop is not None or final):
        chosen = inside[-1]
    elif stop is not None or final:
        # The scene's frames have left the window (the detector's lag was longer than it):
        # the oldest frame held is the nearest there is.
        chosen = recent[0]
    else:
        return False
    index, at, rgb = chosen
    keyframes.append((index, at, _jpeg(rgb, quality)))
    return True


def _jpeg(rgb: np.ndarray[Any, Any], quality: int) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="JPEG", quality=quality)
    return out.getvalue()
