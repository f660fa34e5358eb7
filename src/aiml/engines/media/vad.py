"""Voice activity with Silero VAD's ONNX model on ONNX Runtime alone (no torch).

The ``silero-vad`` package runs the same model through torch (and ``import silero_vad``
sets torch's thread count for the whole process); here the ONNX file it ships is run
directly: ~70 MiB resident against ~226 MiB through torch, 11.8 s of audio in ~0.1 s
(measured for issue 12). The model is stateful: each 512-sample window (32 ms at 16 kHz) is
fed with the 64 samples before it and the state the previous window left; without that
context it runs without error and finds almost no speech.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from aiml.types import SpeechSegment

from .audio import RATE

__all__ = ["SileroVad", "Windows", "speech_segments"]

_WINDOW = 512
_CONTEXT = 64


class SileroVad:
    """One ONNX Runtime session on Silero's stateful model; each stream's state in its
    :class:`Windows`."""

    def __init__(self, path: Path, *, threads: int) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self._session = onnxruntime.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )

    def windows(self) -> Windows:
        """A new stream of audio to score, fed a piece at a time (its own state)."""
        return Windows(self._session)


class Windows:
    """One stream's scoring: its state and the last samples carry from piece to piece, so
    audio fed in pieces scores exactly as it would whole, in memory for one piece."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros(_CONTEXT, dtype=np.float32)
        self._rest = np.zeros(0, dtype=np.float32)  # the samples short of a whole window

    def feed(self, audio: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """The probability of speech in each whole 32 ms window of 16 kHz mono float32
        audio so far; what is left over waits for the next piece."""
        samples = np.concatenate([self._rest, audio.astype(np.float32, copy=False)])
        whole = samples.size // _WINDOW * _WINDOW
        self._rest = samples[whole:]
        return self._score(samples[:whole])

    def finish(self) -> np.ndarray[Any, Any]:
        """The last window's probability (zero-padded), if samples were left over."""
        if not self._rest.size:
            return np.zeros(0, dtype=np.float32)
        padded = np.zeros(_WINDOW, dtype=np.float32)
        padded[: self._rest.size] = self._rest
        self._rest = np.zeros(0, dtype=np.float32)
        return self._score(padded)

    def _score(self, samples: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        padded = np.concatenate([self._context, samples])
        rate = np.array(RATE, dtype=np.int64)  # a 0-d int64 tensor: a Python int is refused
        windows = samples.size // _WINDOW
        out = np.empty(windows, dtype=np.float32)
        for i in range(windows):
            chunk = padded[i * _WINDOW : (i + 1) * _WINDOW + _CONTEXT][None, :]
            feed = {"input": chunk, "state": self._state, "sr": rate}
            prob, self._state = self._session.run(None, feed)
            out[i] = prob[0, 0]
        if windows:
            self._context = padded[-_CONTEXT:]
        return out


def speech_segments(
    probs: np.ndarray[Any, Any],
    duration_s: float,
    *,
    threshold: float = 0.5,
    min_speech_s: float = 0.25,
    min_silence_s: float = 0.1,
    pad_s: float = 0.03,
) -> list[SpeechSegment]:
    """Spans where speech starts above ``threshold`` and ends after ``min_silence_s`` below
    ``threshold - 0.15`` (hysteresis: a dip does not split a word); shorter than
    ``min_speech_s`` is dropped; each is padded by ``pad_s``, neighbours never overlapping.
    The probability is the span's peak window."""
    step = _WINDOW / RATE
    low = max(threshold - 0.15, 0.01)
    spans: list[tuple[int, int]] = []  # window indexes [first, end)
    start: int | None = None
    quiet_from: int | None = None
    for i, p in enumerate(probs):
        if p >= threshold:
            quiet_from = None
            start = i if start is None else start
        elif start is not None and p < low:
            quiet_from = i if quiet_from is None else quiet_from
            if (i - quiet_from + 1) * step >= min_silence_s:
                spans.append((start, quiet_from))
                start = quiet_from = None
    if start is not None:
        spans.append((start, quiet_from if quiet_from is not None else len(probs)))
    kept = [(a, b) for a, b in spans if (b - a) * step >= min_speech_s]
    segments: list[SpeechSegment] = []
    for a, b in kept:
        begin = max(0.0, a * step - pad_s)
        if segments and begin < segments[-1].end:  # padding met the previous span
            begin = (segments[-1].end + a * step) / 2
            last = segments[-1]
            segments[-1] = SpeechSegment(last.start, begin, last.probability)
        end = min(duration_s, b * step + pad_s)
        peak = float(probs[a:b].max())
        segments.append(SpeechSegment(round(begin, 3), round(end, 3), round(peak, 4)))
    return segments
