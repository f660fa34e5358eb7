"""Speech and OCR: Whisper tiny.en's real-time factor, aiml's overhead over faster-whisper
called directly, and OCR images per second, on the bundled models.

1. Transcription: a ~30 s espeak-ng paragraph (WAV), int8, the same threads and beam on both
   sides: faster-whisper in this process (decoding the same WAV bytes, VAD on) against
   ``POST /v1/audio/transcriptions`` on a running ``aiml serve``, interleaved run by run.
   Real-time factor = seconds of work / seconds of audio.
2. OCR: a three-line 32 px image through ``/inference/infer`` (task ocr) against RapidOCR
   called directly with the same settings, interleaved; images per second.
3. With ``--long-minutes N``: the server's peak resident memory (VmHWM, reset through
   ``/proc/PID/clear_refs`` before each) while it transcribes the paragraph once, then N
   minutes of it over and over: flat when long audio goes piece by piece.

    .venv/bin/python -m bench.speech_ocr --rounds 5 --long-minutes 12
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from aiml.bundled import BUNDLED
from tests.fakes.documents import text_image
from tests.fakes.processes import aiml_serve
from tests.fakes.speech import espeak_available, speak

PARAGRAPH = (
    "Good morning everyone, and thank you for joining the quarterly planning meeting. "
    "Today we will review the results of the last three months, discuss the budget for "
    "the new office in Berlin, and agree on the hiring plan for the engineering team. "
    "Maria will present the sales figures first, then Tom will walk us through the "
    "product roadmap, and we will finish with questions from the floor."
)
LINES = ["Invoice 2024-117 for ACME Corp.", "Total due: 1,250.00 EUR by 30 June",
         "The quick brown fox jumps over the lazy dog"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved runs per side")
    parser.add_argument("--long-minutes", type=float, default=0, help="a long recording (0: none)")
    args = parser.parse_args()
    if not espeak_available():
        raise SystemExit("this benchmark speaks with espeak-ng: apt-get install espeak-ng")
    work = Path(tempfile.mkdtemp(prefix="aiml-bench-speech-"))
    paths = {m.registered_name: m.locate(work) for m in BUNDLED}
    threads = os.cpu_count() or 1
    env = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'registry.db'}",
        "AIML_ENGINES": "whisper,onnx",
        "AIML_WHISPER_THREADS": str(threads),
        "AIML_ONNX_THREADS": str(threads),
        "AIML_MAX_BODY_BYTES": str(256 << 20),  # a long WAV upload
    }
    full_env = {**os.environ, **env, "AIML_HOME": str(work / "home")}
    for name in ("whisper-tiny-en", "pp-ocrv4"):
        subprocess.run([sys.executable, "-m", "aiml", "register", str(paths[name]), name],
                       env=full_env, check=True, capture_output=True)  # fmt: skip
    wav = speak(PARAGRAPH, work / "paragraph.wav").read_bytes()
    png = io.BytesIO()
    text_image(LINES, size=32).save(png, format="PNG")
    server = aiml_serve(work / "serve", env)
    server.start()
    try:
        base = server.health_url.removesuffix("/health/live")
        with httpx.Client(base_url=base, timeout=300) as http:
            asr = _transcription(http, paths["whisper-tiny-en"], wav, threads, args.rounds)
            ocr = _ocr(http, paths["pp-ocrv4"], png.getvalue(), threads, args.rounds)
            assert server.proc is not None
            long = _long(http, server.proc.pid, work, args.long_minutes)
    finally:
        server.stop()
    (direct, via, audio_s), (ocr_direct, ocr_via) = asr, ocr
    print(f"\n1. Transcription, Whisper tiny.en int8, {audio_s:.1f} s of speech, {threads} threads")
    _row("faster-whisper direct", direct, "s")
    _row("aiml /v1/audio/...", via, "s")
    print(f"   real-time factor direct : {statistics.median(direct) / audio_s:.3f}")
    print(f"   real-time factor aiml   : {statistics.median(via) / audio_s:.3f}")
    overhead = statistics.median(via) / statistics.median(direct) - 1
    print(f"   aiml overhead           : {overhead:+.1%}")
    print("\n2. OCR, PP-OCRv4, three 32 px lines (784x208)")
    _row("RapidOCR direct", [1 / s for s in ocr_direct], "images/s")
    _row("aiml /inference/infer", [1 / s for s in ocr_via], "images/s")
    if long is not None:
        short, peak, seconds, took = long
        rtf = took / seconds
        print(f"\n3. A {seconds / 60:.1f}-minute recording: {took:.1f} s (RTF {rtf:.3f})")
        print(f"   server peak RSS while transcribing {audio_s:.0f} s: {short:.0f} MiB, "
              f"{seconds / 60:.1f} min: {peak:.0f} MiB")  # fmt: skip


def _long(
    http: httpx.Client, pid: int, work: Path, minutes: float
) -> tuple[float, float, float, float] | None:
    if minutes <= 0:
        return None
    import wave

    from aiml.engines.media.audio import RATE, decode_chunks

    one = speak(PARAGRAPH, work / "one.wav").read_bytes()
    seconds_one = sum(p.size for p in decode_chunks(one, max_seconds=600)) / RATE
    with wave.open(str(work / "one.wav")) as w:
        params, frames = w.getparams(), w.readframes(w.getnframes())
    times = max(1, round(minutes * 60 / seconds_one))
    with wave.open(str(work / "long.wav"), "wb") as w:
        w.setparams(params)
        for _ in range(times):
            w.writeframes(frames)
    form = {"model": "whisper-tiny-en"}
    _reset_peak(pid)
    http.post("/v1/audio/transcriptions", files={"file": ("one.wav", one)}, data=form)
    short = _peak_mib(pid)
    _reset_peak(pid)
    files = {"file": ("long.wav", (work / "long.wav").read_bytes())}
    started = time.perf_counter()
    answer = http.post("/v1/audio/transcriptions", files=files, data=form)
    took = time.perf_counter() - started
    answer.raise_for_status()
    return short, _peak_mib(pid), times * seconds_one, took


def _reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM back to the current RSS


def _peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise SystemExit("no VmHWM in /proc")


def _row(label: str, values: list[float], unit: str) -> None:
    runs = ", ".join(f"{v:.3f}" for v in values)
    print(f"   {label:<24}: median {statistics.median(values):7.3f} {unit}  (runs: {runs})")


def _transcription(
    http: httpx.Client, folder: Path, wav: bytes, threads: int, rounds: int
) -> tuple[list[float], list[float], float]:
    from faster_whisper import WhisperModel

    from aiml.engines.media.audio import RATE, decode_chunks

    model = WhisperModel(str(folder), device="cpu", compute_type="int8", cpu_threads=threads)
    files = {"file": ("paragraph.wav", wav)}
    form = {"model": "whisper-tiny-en"}

    def direct() -> str:
        segments, _ = model.transcribe(io.BytesIO(wav), language="en", vad_filter=True,
                                       temperature=0.0, beam_size=5)  # fmt: skip
        return " ".join(s.text.strip() for s in segments)

    http.post("/v1/audio/transcriptions", files=files, data=form).raise_for_status()  # load
    direct()  # warm
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        started = time.perf_counter()
        direct()
        times[0].append(time.perf_counter() - started)
        started = time.perf_counter()
        http.post("/v1/audio/transcriptions", files=files, data=form).raise_for_status()
        times[1].append(time.perf_counter() - started)
    seconds = sum(p.size for p in decode_chunks(wav, max_seconds=600)) / RATE
    return times[0], times[1], seconds


def _ocr(
    http: httpx.Client, folder: Path, png: bytes, threads: int, rounds: int
) -> tuple[list[float], list[float]]:
    from PIL import Image
    from rapidocr_onnxruntime import RapidOCR

    ocr = RapidOCR(
        det_model_path=str(next(folder.glob("*det*.onnx"))),
        rec_model_path=str(next(folder.glob("*rec*.onnx"))),
        det_limit_type="max", intra_op_num_threads=threads, inter_op_num_threads=1,
    )  # fmt: skip
    body = {"task": "ocr", "engine": "onnx", "model_name": "pp-ocrv4",
            "data": {"image": base64.b64encode(png).decode()}}  # fmt: skip
    http.post("/inference/infer", json=body).raise_for_status()  # load
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        started = time.perf_counter()
        ocr(Image.open(io.BytesIO(png)).convert("RGB"), use_cls=False)
        times[0].append(time.perf_counter() - started)
        started = time.perf_counter()
        http.post("/inference/infer", json=body).raise_for_status()
        times[1].append(time.perf_counter() - started)
    return times


if __name__ == "__main__":
    main()
