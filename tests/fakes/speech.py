"""Real speech for speech-to-text and voice-activity tests, made offline.

espeak-ng (Debian package ``espeak-ng``) speaks text into a 16-bit mono WAV at 22050 Hz;
PyAV (the ``av`` wheel that faster-whisper depends on, with FFmpeg bundled) re-encodes it
to MP3 or FLAC, so no ``ffmpeg`` program is needed. ``word_error_rate`` scores a
transcript against the text that was spoken.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import wave
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

_CODECS = {"mp3": "libmp3lame", "flac": "flac"}


def espeak_available() -> bool:
    """True when the ``espeak-ng`` program is on PATH (``apt-get install espeak-ng``)."""
    return shutil.which("espeak-ng") is not None


def speak(text: str, path: Path, *, voice: str = "en-us", speed: int | None = None) -> Path:
    """Speak ``text`` into the WAV file ``path`` (mono, 16-bit, 22050 Hz) and return it.

    ``speed`` is espeak-ng's words per minute (its default is 175).
    """
    cmd = ["espeak-ng", "-v", voice, "-w", str(path)]
    if speed is not None:
        cmd += ["-s", str(speed)]
    # "--" keeps text that starts with "-" from being read as an option.
    subprocess.run([*cmd, "--", text], check=True, capture_output=True, timeout=60)
    return path


def encode(wav: Path, fmt: Literal["mp3", "flac"]) -> bytes:
    """Re-encode a WAV file as MP3 or FLAC bytes (same rate and channels), with PyAV."""
    import av

    out = io.BytesIO()
    with av.open(str(wav)) as src, av.open(out, mode="w", format=fmt) as dst:
        in_stream = src.streams.audio[0]
        # espeak's WAV says "1 channels" (no channel order), which lame refuses: name it.
        layout = "mono" if in_stream.channels == 1 else "stereo"
        stream = dst.add_stream(_CODECS[fmt], rate=in_stream.rate, layout=layout)
        assert isinstance(stream, av.audio.stream.AudioStream)
        # PyAV converts each frame to the encoder's sample format and frame size itself.
        for frame in src.decode(in_stream):
            dst.mux(stream.encode(frame))
        dst.mux(stream.encode(None))
    return out.getvalue()


def silence_wav(seconds: float, rate: int = 16000) -> bytes:
    """A WAV file (mono, 16-bit) of ``seconds`` of digital silence, as bytes."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\0\0" * round(seconds * rate))
    return out.getvalue()


def _words(text: str) -> list[str]:
    """Lower-case words with punctuation dropped ("Don't, stop!" -> ["dont", "stop"])."""
    text = text.lower().replace("'", "").replace("\u2019", "")
    return re.sub(r"[^\w\s]|_", " ", text).split()


def edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Levenshtein distance (substitutions, insertions, deletions all cost 1)."""
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        current = [i]
        for j, h in enumerate(hyp, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1]


def word_error_rate(ref: str, hyp: str) -> float:
    """Word edits needed to turn ``hyp`` into ``ref``, divided by the words in ``ref``.

    Case and punctuation are ignored; numbers are compared as written, so speak
    "forty two" and expect "42" only with a looser check. With an empty ``ref`` the
    result is the number of words in ``hyp`` (0.0 when both are empty).
    """
    r, h = _words(ref), _words(hyp)
    if not r:
        return float(len(h))
    return edit_distance(r, h) / len(r)
