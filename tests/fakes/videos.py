"""Videos for the video and scene tests, made with PyAV (FFmpeg bundled in the ``av`` wheel).

Coloured cards with drawn text (Pillow's default font), cut at known times; a slow pan and
a fade to black and back (neither is a cut); optionally a sine tone as the audio track.
Small (320x240, 15 fps, a few seconds) so they are made in well under a second.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "CARDS",
    "Card",
    "card_png",
    "card_video",
    "cuts",
    "fade_video",
    "long_video",
    "pan_video",
]

Card = tuple[str, tuple[int, int, int], float]  # its text, its colour, how long it shows
#: Four cards; the cuts fall at 1.0, 2.4 and 3.6 s (whole frames at 15 fps).
CARDS: tuple[Card, ...] = (
    ("FIRST CARD", (200, 30, 30), 1.0),
    ("SECOND CARD", (30, 160, 40), 1.4),
    ("THIRD CARD", (30, 60, 200), 1.2),
    ("LAST CARD", (220, 200, 40), 1.4),
)
_FORMATS = {"mp4": ("mp4", "h264"), "mkv": ("matroska", "h264"), "webm": ("webm", "libvpx"),
            "mov": ("mov", "mpeg4")}  # fmt: skip


def card(
    text: str, colour: tuple[int, int, int], size: tuple[int, int] = (320, 240)
) -> Image.Image:
    image = Image.new("RGB", size, colour)
    draw = ImageDraw.Draw(image)
    # A narrow band: a larger unchanging area would dilute the change at a cut below the
    # content detector's threshold (green to blue scored 26.3 of 27 with a 60 px band).
    draw.rectangle((20, size[1] // 2 - 14, size[0] - 20, size[1] // 2 + 14), fill=(255, 255, 255))
    draw.text((40, size[1] // 2 - 6), text, fill=(0, 0, 0))
    return image


def encode(
    frames: Iterator[np.ndarray],
    *,
    fps: int = 15,
    size: tuple[int, int] = (320, 240),
    fmt: str = "mp4",
    tone_s: float = 0.0,
    path: Path | None = None,
    gop: int = 30,
    faststart: bool = False,
) -> bytes:
    """Frames (RGB arrays) encoded as ``fmt`` (mp4, mkv, webm or mov); a 440 Hz tone of
    ``tone_s`` seconds as the audio track when it is above 0. Written to ``path`` when
    given (the bytes returned are then empty), else returned. ``faststart`` puts an MP4's
    index before its frames, as phones and web encoders do (only into a file: FFmpeg goes
    back over it)."""
    import av

    container_format, codec = _FORMATS[fmt]
    out: io.BytesIO | str = str(path) if path is not None else io.BytesIO()
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(out, mode="w", format=container_format, options=options) as dst:
        video = dst.add_stream(codec, rate=fps)
        video.width, video.height = size
        video.pix_fmt = "yuv420p"
        video.codec_context.gop_size = gop
        if codec == "h264":
            video.codec_context.options = {"preset": "ultrafast"}
        audio = None
        if tone_s > 0:
            audio = dst.add_stream(
                "libopus" if fmt == "webm" else "aac", rate=48_000, layout="mono"
            )
        for frame in frames:
            dst.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        dst.mux(video.encode(None))
        if audio is not None:
            rate = 48_000
            t = np.arange(int(tone_s * rate)) / rate
            tone = (0.3 * np.sin(2 * math.pi * 440 * t)).astype(np.float32)
            for offset in range(0, tone.size, 960):
                piece = av.AudioFrame.from_ndarray(
                    tone[None, offset : offset + 960], format="flt", layout="mono"
                )
                piece.sample_rate = rate
                piece.pts = offset
                piece.time_base = Fraction(1, rate)
                dst.mux(audio.encode(piece))
            dst.mux(audio.encode(None))
    return b"" if isinstance(out, str) else out.getvalue()


def card_video(cards: Sequence[Card] = CARDS, *, fps: int = 15, fmt: str = "mp4",
               tone: bool = False, path: Path | None = None) -> bytes:  # fmt: skip
    """The cards one after another; the cuts at the running sums of their lengths (an MP4
    written to ``path`` has its index first)."""

    def frames() -> Iterator[np.ndarray]:
        for text, colour, seconds in cards:
            still = np.asarray(card(text, colour))
            for _ in range(round(seconds * fps)):
                yield still

    total = sum(seconds for _, _, seconds in cards)
    tone_s = total if tone else 0.0
    return encode(frames(), fps=fps, fmt=fmt, tone_s=tone_s, path=path, faststart=path is not None)


def cuts(cards: Sequence[Card] = CARDS) -> list[float]:
    """Where ``card_video``'s cuts fall, in seconds."""
    times, at = [], 0.0
    for _, _, seconds in cards[:-1]:
        at += seconds
        times.append(round(at, 3))
    return times


def pan_video(seconds: float = 4.0, *, fps: int = 15, speed_px_s: float = 20.0) -> bytes:
    """A wide textured picture (bands, circles and text) panned slowly to the right."""
    wide = Image.new("RGB", (960, 240), (90, 120, 150))
    draw = ImageDraw.Draw(wide)
    for x in range(0, 960, 40):
        draw.rectangle((x, 0, x + 19, 240), fill=((x * 3) % 255, 100, 200 - (x // 8) % 150))
        draw.ellipse((x, 100, x + 30, 130), fill=(240, 240, 240))
        draw.text((x + 2, 60), f"{x}", fill=(0, 0, 0))
    pixels = np.asarray(wide)

    def frames() -> Iterator[np.ndarray]:
        for i in range(round(seconds * fps)):
            left = round(i * speed_px_s / fps)
            yield np.ascontiguousarray(pixels[:, left : left + 320])

    return encode(frames(), fps=fps)


def fade_video(seconds: float = 4.0, *, fps: int = 15) -> bytes:
    """One card that fades to black over its first half and back over its second."""
    still = np.asarray(card("FADING CARD", (40, 150, 200))).astype(np.float32)
    count = round(seconds * fps)

    def frames() -> Iterator[np.ndarray]:
        for i in range(count):
            level = abs(1 - 2 * i / (count - 1))
            yield (still * level).astype(np.uint8)

    return encode(frames(), fps=fps)


#: Saturated colours, each far from the next: the long video's cuts are all real cuts.
_PALETTE = ((220, 40, 40), (40, 180, 60), (40, 60, 220), (230, 210, 50), (200, 60, 200),
            (40, 200, 200))  # fmt: skip


def long_video(
    path: Path, *, minutes: float = 20.0, fps: int = 2, size: tuple[int, int] = (64, 48)
) -> Path:
    """``minutes`` of tiny cards changing colour every 10 s (a small square moving on
    them), written to ``path`` (MKV)."""
    count = round(minutes * 60 * fps)
    width, height = size

    def frames() -> Iterator[np.ndarray]:
        for i in range(count):
            frame = np.empty((height, width, 3), dtype=np.uint8)
            frame[:] = _PALETTE[i // (10 * fps) % len(_PALETTE)]
            x = i % (width - 8)
            frame[4:12, x : x + 8] = 255
            yield frame

    encode(frames(), fps=fps, size=size, fmt="mkv", path=path, gop=10 * fps)
    return path


def card_png(fmt: str = "PNG") -> bytes:
    """One card as a still image (PNG or JPEG): an image, not a video."""
    out = io.BytesIO()
    card("A STILL CARD", (30, 160, 40)).save(out, format=fmt)
    return out.getvalue()
