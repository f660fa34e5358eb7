"""Hypothesis strategies for media files a client may send: valid tiny ones and the hostile
or broken kinds (zero-length, truncated, wrong magic, headers that declare huge sizes).

Each family is a list of fixed samples (every hostile kind, sent once each) and a strategy
for the generated ones (truncations at any length, random bytes), each ``(kind, bytes)``;
``kind`` names what the file is, for the report of what was sent. Everything is made in
memory, in milliseconds.
"""

from __future__ import annotations

import io
import struct
import zlib

from hypothesis import strategies as st
from PIL import Image

from tests.fakes.documents import pdf_of
from tests.fakes.speech import silence_wav

__all__ = ["Family", "audio_files", "document_files", "image_files", "model_files"]

Media = tuple[str, bytes]
#: The fixed samples and the strategy for generated ones.
Family = tuple[list[Media], st.SearchStrategy[Media]]


def _png(width: int = 32, height: int = 16) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (255, 255, 255)).save(out, format="PNG")
    return out.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A well-formed PNG whose header declares ``width`` x ``height`` (a decompression bomb's
    header: a few hundred bytes that would decode to tens of gigabytes)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    rows = zlib.compress(b"\0" * 64)  # far too little data for the rows it declares
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", rows)
        + _chunk(b"IEND", b"")
    )


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (24, 24), (10, 200, 30)).save(out, format="JPEG")
    return out.getvalue()


def tiny_pdf(media_box: str = "0 0 200 100") -> bytes:
    """A one-page PDF with a text layer, its cross-reference table computed."""
    stream = b"BT /F1 12 Tf 20 50 Td (Fuzzed page) Tj ET"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [" + media_box.encode() + b"] "
        b"/Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    return pdf_of(objects)


def many_pages_pdf(pages: int = 2000) -> bytes:
    """A small file that declares thousands of pages (each the same tiny page)."""
    kids = b" ".join(b"3 0 R" for _ in range(pages))
    base = tiny_pdf()
    return base.replace(b"/Kids [3 0 R] /Count 1", b"/Kids [" + kids + b"] /Count %d" % pages)


def wav(seconds: float = 0.5, rate: int = 16_000) -> bytes:
    return silence_wav(seconds, rate)


def wav_claiming(hours: float, rate: int = 16_000, channels: int = 1) -> bytes:
    """A WAV header whose sizes say ``hours`` of audio, followed by a second of it."""
    declared = min(int(hours * 3600 * rate * 2 * channels), 0xFFFFFFFF - 36)
    header = b"RIFF" + struct.pack("<I", declared + 36) + b"WAVE"
    header += b"fmt " + struct.pack(
        "<IHHIIHH", 16, 1, channels, rate, rate * 2 * channels, 2 * channels, 16
    )
    return header + b"data" + struct.pack("<I", declared) + b"\0\0" * rate


def _truncations(whole: bytes, label: str) -> st.SearchStrategy[Media]:
    return st.integers(1, len(whole) - 1).map(lambda n: (f"{label} cut at {n}", whole[:n]))


def _junk(label: str) -> st.SearchStrategy[Media]:
    return st.binary(min_size=1, max_size=256).map(lambda data: (label, data))


def _family(valid: bytes, label: str, fixed: list[Media]) -> Family:
    samples = [("zero-length", b""), (f"valid {label}", valid), *fixed]
    return samples, st.one_of(_truncations(valid, label), _junk("random bytes"))


def image_files() -> Family:
    png, jpeg = _png(), _jpeg()
    return _family(png, "PNG", [
        ("valid JPEG", jpeg),
        ("JPEG cut in half", jpeg[: len(jpeg) // 2]),
        ("PNG declaring 100000x100000", huge_png()),
        ("PNG declaring 1x100000000", huge_png(1, 100_000_000)),
        ("PNG declaring 0x0", huge_png(0, 0)),
        ("PNG magic, then garbage", b"\x89PNG\r\n\x1a\n" + b"\0" * 40),
        ("JPEG magic, then garbage", b"\xff\xd8\xff\xe0" + b"\x01" * 40),
        ("a PDF sent as an image", tiny_pdf()),
        ("a WAV sent as an image", wav(0.1)),
        ("GIF magic alone", b"GIF89a"),
    ])  # fmt: skip


def document_files() -> Family:
    pdf = tiny_pdf()
    return _family(pdf, "PDF", [
        ("PDF with a 14400x14400 pt MediaBox", tiny_pdf("0 0 14400 14400")),
        ("PDF with a 1e9 pt MediaBox", tiny_pdf("0 0 1000000000 1000000000")),
        ("PDF with a negative MediaBox", tiny_pdf("0 0 -500 -500")),
        ("PDF declaring 2000 pages", many_pages_pdf()),
        ("PDF magic, then garbage", b"%PDF-1.7\n" + b"\x00garbage" * 8),
        ("PDF with no trailer", pdf[: pdf.index(b"xref")]),
        ("a PNG sent as a document", _png()),
    ])  # fmt: skip


def audio_files() -> Family:
    return _family(wav(), "WAV", [
        ("WAV claiming 3 hours", wav_claiming(3)),
        ("WAV claiming 74 hours at 8 kHz", wav_claiming(74, rate=8000)),
        ("WAV at 1 Hz", wav_claiming(0.5, rate=1)),
        ("WAV with 0 channels", wav_claiming(0.001, channels=0)),
        ("RIFF magic, then garbage", b"RIFF\xff\xff\xff\xffWAVEjunk" + b"\x01" * 32),
        ("MP3 frame sync alone", b"\xff\xfb\x90\x00" + b"\0" * 64),
        ("a PNG sent as audio", _png()),
    ])  # fmt: skip


Upload = tuple[str, str, bytes]  # what it is, its file name, its bytes


def model_files(real_onnx: bytes) -> tuple[list[Upload], st.SearchStrategy[Upload]]:
    """What an upload to ``/admin/models/register`` may hold: fixed samples (``real_onnx``,
    a real model's bytes, whole and cut short among them) and generated files."""
    names = st.sampled_from(["model.gguf", "model.onnx", "config.json", "weights.bin"])
    gguf_header = b"GGUF" + struct.pack("<IQQ", 3, 0, 0)  # version 3, no tensors, no metadata
    huge_gguf = b"GGUF" + struct.pack("<IQQ", 3, 1 << 60, 1 << 60)
    fixed = [
        ("zero-length .gguf", "model.gguf", b""),
        ("GGUF header, nothing else", "model.gguf", gguf_header),
        ("GGUF header cut short", "model.gguf", gguf_header[:9]),
        ("GGUF declaring 2^60 tensors", "model.gguf", huge_gguf),
        ("a PNG named .gguf", "model.gguf", _png()),
        ("valid ONNX", "model.onnx", real_onnx),
        ("ONNX cut in half", "model.onnx", real_onnx[: len(real_onnx) // 2]),
        ("a PNG named .onnx", "model.onnx", _png()),
        ("a config.json that is not JSON", "config.json", b"{not json"),
        ("a path outside the model", "../escape.gguf", gguf_header),
    ]  # fmt: skip
    generated = st.one_of(
        names.map(lambda name: ("zero-length", name, b"")),
        st.tuples(names, st.binary(min_size=1, max_size=512)).map(
            lambda pair: ("random bytes", pair[0], pair[1])
        ),
        st.integers(1, len(real_onnx) - 1).map(
            lambda n: ("ONNX cut short", "model.onnx", real_onnx[:n])
        ),
    )
    return fixed, generated
