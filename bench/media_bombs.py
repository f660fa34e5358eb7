"""Media bombs and deadlines (issue 17, findings 5 and 8), against a running ``aiml serve``
on the bundled OCR and VAD models: what one request costs the process, and what it costs
another user's small OCR request meanwhile.

1. A giant page: a one-page PDF of a few hundred bytes whose page is ``--inches`` square
   and empty (no text layer, so it is rendered to be read). The server's resident memory
   growth (VmHWM over the RSS before, reset through ``/proc/PID/clear_refs``), the
   request's time and status, and the worst latency of small OCR requests sent one after
   another while it runs. Mind the machine: before the fix a page renders at 150 dpi
   whatever its size (issue 17: 200 inches took 12 GB), so measure old code with a
   smaller page (50 inches: ~1 GB).
2. A deadline: a ``--pages``-page scanned PDF (A4 at 150 dpi, three lines a page) sent with
   ``X-Request-Timeout: --timeout``: when its 504 came, for how long the server's CPU kept
   working after it (CPU time from ``/proc/PID/stat``, until it rises under 5% of a core
   over half a second), and the worst latency of small OCR requests sent meanwhile.
3. Memory per media request at its limits: an image at the pixel limit (``--pixels``,
   here also the server's ``AIML_MAX_IMAGE_PIXELS``), a PDF page at it (a 50-inch page,
   rendered at the DPI that fits) and ``--audio-minutes`` of speech for voice activity.

    .venv/bin/python -m bench.media_bombs --inches 200 --pages 20 --timeout 10
    PYTHONPATH=/tmp/base/src .venv/bin/python -m bench.media_bombs --inches 50  # the old code
"""

from __future__ import annotations

import argparse
import base64
import io
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import wave
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from aiml.bundled import BUNDLED
from tests.fakes.documents import giant_page_pdf, scanned_pdf, text_image
from tests.fakes.processes import aiml_serve
from tests.fakes.speech import espeak_available, speak

SMALL = ["Total due: 1,250.00 EUR by 30 June"]
PAGE_LINES = ["Invoice 2024-117 for ACME Corp.", "Total due: 1,250.00 EUR by 30 June",
              "The quick brown fox jumps over the lazy dog"]  # fmt: skip
_TICKS = os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inches", type=float, default=200, help="the giant page's side")
    parser.add_argument("--pages", type=int, default=20, help="pages of the late document")
    parser.add_argument("--timeout", type=float, default=10, help="its X-Request-Timeout (s)")
    parser.add_argument("--pixels", type=int, default=40_000_000, help="AIML_MAX_IMAGE_PIXELS")
    parser.add_argument("--audio-minutes", type=float, default=20, help="speech for VAD (0: none)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="aiml-bench-bombs-"))
    paths = {m.registered_name: m.locate(work) for m in BUNDLED}
    env = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'registry.db'}",
        "AIML_ENGINES": "onnx",
        "AIML_MAX_IMAGE_PIXELS": str(args.pixels),
        "AIML_MAX_BODY_BYTES": str(256 << 20),  # a long WAV upload
    }
    full_env = {**os.environ, **env, "AIML_HOME": str(work / "home")}
    for name in ("pp-ocrv4", "silero-vad"):
        subprocess.run([sys.executable, "-m", "aiml", "register", str(paths[name]), name],
                       env=full_env, check=True, capture_output=True)  # fmt: skip
    server = aiml_serve(work / "serve", env)
    server.start()
    try:
        assert server.proc is not None
        pid = server.proc.pid
        base = server.health_url.removesuffix("/health/live")
        with httpx.Client(base_url=base, timeout=600) as http:
            idle = [_small_ocr(http) for _ in range(5)][1:]  # the first one loads the model
            print(f"small OCR alone: median {statistics.median(idle):.3f} s")
            _giant_page(http, pid, args.inches)
            _late_document(http, pid, args.pages, args.timeout)
            _limits(http, pid, work, args.pixels, args.audio_minutes)
    finally:
        server.stop()


def _giant_page(http: httpx.Client, pid: int, inches: float) -> None:
    pdf = giant_page_pdf(inches, inches)
    before = _status_mib(pid, "VmRSS")
    _reset_peak(pid)
    with _SmallRequests(http) as others:
        started = time.perf_counter()
        answer = _infer(http, "document-analysis", {"document": pdf})
        took = time.perf_counter() - started
    growth = _status_mib(pid, "VmHWM") - before
    detail = (
        answer.json()["result"]["pages"][0].get("dpi")
        if answer.status_code == 200
        else (answer.json()["error"]["message"])
    )
    print(f"\n1. A {len(pdf)}-byte PDF, one {inches:g} x {inches:g} inch page")
    print(f"   answer {answer.status_code} in {took:.1f} s ({detail})")
    print(f"   server RSS growth (peak over before): {growth:.0f} MiB")
    print(f"   another user's small OCR meanwhile: {others.summary()}")


def _late_document(http: httpx.Client, pid: int, pages: int, timeout: float) -> None:
    pdf = scanned_pdf([PAGE_LINES] * pages)
    headers = {"X-Request-Timeout": f"{timeout:g}"}
    others = _SmallRequests(http, after_s=1.0)
    with others:
        started = time.perf_counter()
        answer = _infer(http, "document-analysis", {"document": pdf}, headers=headers)
        answered = time.perf_counter()
        cpu_at_answer = _cpu_s(pid)
        others.stop()  # no new ones; the one in flight is waited for (it may wait long)
    idle_at = _idle_at(pid)
    print(f"\n2. A {pages}-page scanned PDF (A4, 150 dpi) with X-Request-Timeout: {timeout:g}")
    print(f"   answer {answer.status_code} after {answered - started:.1f} s")
    print(f"   the server's CPU kept working for {idle_at - answered:.1f} s after it "
          f"({_cpu_s(pid) - cpu_at_answer:.1f} CPU s, one small OCR's included)")  # fmt: skip
    print(f"   another user's small OCR meanwhile: {others.summary()}")


def _limits(http: httpx.Client, pid: int, work: Path, pixels: int, minutes: float) -> None:
    side = math.isqrt(pixels)
    page = Image.new("RGB", (side, side), "white")
    page.paste(text_image(PAGE_LINES, size=64), (200, 200))
    png = io.BytesIO()
    page.save(png, format="PNG")
    print(f"\n3. Memory per media request at its limits (AIML_MAX_IMAGE_PIXELS={pixels})")
    image = _peak(http, pid, "ocr", {"image": png.getvalue()})
    print(f"   an image of {side} x {side} ({len(png.getvalue()) >> 10} KiB PNG): {image}")
    pdf = _peak(http, pid, "document-analysis", {"document": giant_page_pdf(50, 50)})
    print(f"   a PDF page of 50 x 50 inches: {pdf}")
    if minutes > 0 and espeak_available():
        wav = _long_wav(work, minutes)
        vad = _peak(http, pid, "vad", {"audio": wav}, model="silero-vad")
        print(f"   {minutes:g} minutes of speech for voice activity ({len(wav) >> 20} MiB WAV): "
              f"{vad}")  # fmt: skip


def _peak(
    http: httpx.Client, pid: int, task: str, data: dict[str, bytes], model: str = "pp-ocrv4"
) -> str:
    before = _status_mib(pid, "VmRSS")
    _reset_peak(pid)
    started = time.perf_counter()
    answer = _infer(http, task, data, model=model)
    took = time.perf_counter() - started
    growth = _status_mib(pid, "VmHWM") - before
    note = ""
    if answer.status_code == 200 and task == "document-analysis":
        note = f", rendered at {answer.json()['result']['pages'][0].get('dpi')} dpi"
    elif answer.status_code != 200:
        note = f", {answer.json()['error']['message'][:80]}"
    return f"{answer.status_code} in {took:.1f} s, RSS growth {growth:.0f} MiB{note}"


class _SmallRequests:
    """Another user: small OCR requests one after another (from ``after_s``) until the
    block ends (at most 300), and their latencies."""

    def __init__(self, http: httpx.Client, after_s: float = 0.2) -> None:
        self._http = httpx.Client(base_url=http.base_url, timeout=600)
        self._after_s = after_s
        self._stop = threading.Event()
        self.latencies: list[float] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _SmallRequests:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._thread.join(timeout=600)
        self._http.close()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        if self._stop.wait(self._after_s):
            return
        while not self._stop.is_set() and len(self.latencies) < 300:
            self.latencies.append(_small_ocr(self._http))

    def summary(self) -> str:
        if not self.latencies:
            return "none sent"
        runs = len(self.latencies)
        return f"{runs} sent, worst {max(self.latencies):.2f} s, median " \
               f"{statistics.median(self.latencies):.2f} s"  # fmt: skip


def _small_ocr(http: httpx.Client) -> float:
    png = io.BytesIO()
    text_image(SMALL).save(png, format="PNG")
    started = time.perf_counter()
    _infer(http, "ocr", {"image": png.getvalue()}).raise_for_status()
    return time.perf_counter() - started


def _infer(
    http: httpx.Client,
    task: str,
    data: dict[str, bytes],
    model: str = "pp-ocrv4",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    encoded = {key: base64.b64encode(value).decode() for key, value in data.items()}
    body: dict[str, Any] = {"task": task, "engine": "onnx", "model_name": model, "data": encoded}
    return http.post("/inference/infer", json=body, headers=headers)


def _long_wav(work: Path, minutes: float) -> bytes:
    one = speak(" ".join(PAGE_LINES), work / "one.wav")
    with wave.open(str(one)) as w:
        params, frames = w.getparams(), w.readframes(w.getnframes())
        seconds = w.getnframes() / w.getframerate()
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setparams(params)
        for _ in range(max(1, round(minutes * 60 / seconds))):
            w.writeframes(frames)
    return out.getvalue()


def _idle_at(pid: int, idle_share: float = 0.05, window_s: float = 0.5) -> float:
    """When (``time.perf_counter()``) the process's CPU use fell under ``idle_share`` of a
    core over ``window_s``: the start of the first such window (waits at most 600 s)."""
    started = time.perf_counter()
    last = _cpu_s(pid)
    while time.perf_counter() - started < 600:
        time.sleep(window_s)
        now = _cpu_s(pid)
        if now - last < idle_share * window_s:
            return time.perf_counter() - window_s
        last = now
    return time.perf_counter()


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime


def _reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM back to the current RSS


def _status_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"no {field} in /proc")


if __name__ == "__main__":
    main()
