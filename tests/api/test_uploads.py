"""The streaming multipart reader behind /admin/models/register: what it refuses, and that
a refused or broken upload leaves nothing behind."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from aiml.bundled import BUNDLED
from tests.conftest import RunningAiml

B = "edge-boundary"
TYPE = {"content-type": f"multipart/form-data; boundary={B}"}


def field(name: str, value: str) -> bytes:
    return f'--{B}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()


def file(name: str, filename: str, content: bytes) -> bytes:
    head = f'--{B}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n\r\n'
    return head.encode() + content + b"\r\n"


END = f"--{B}--\r\n".encode()
# A GGUF header (version 3, no tensors, no metadata): what registration checks.
GGUF_HEADER = b"GGUF" + struct.pack("<IQQ", 3, 0, 0)
GGUF = file("files", "m.gguf", GGUF_HEADER + bytes(4096))


@pytest.fixture
def aiml(start_aiml: Callable[..., RunningAiml]) -> RunningAiml:
    return start_aiml()


def uploads_left(aiml: RunningAiml) -> list[Path]:
    folder = aiml.services.settings.home_dir / "uploads"
    return list(folder.iterdir()) if folder.exists() else []


WRONG = [
    (field("registered_name", "m") + GGUF + END, {"content-type": "application/json"},
     "multipart/form-data"),
    (field("registered_name", "m") + field("colour", "red") + GGUF + END, TYPE,
     "unknown field 'colour'"),
    (field("registered_name", "m") + field("files", "x") + END, TYPE, "takes files"),
    (field("registered_name", "m") + file("model", "m.gguf", b"x") + END, TYPE,
     "files go in 'files'"),
    (field("registered_name", "m") + GGUF + GGUF + END, TYPE, "uploaded twice"),
    (field("registered_name", "m") + GGUF, TYPE, "no closing boundary"),
    (field("registered_name", "a\x00b") + GGUF + END, TYPE, "NUL"),
    (field("registered_name", "m") + END, TYPE, "upload the model's files"),
    (GGUF + END, TYPE, "registered_name is required"),
    (field("registered_name", "m") + file("files", "../x.gguf", b"x") + END, TYPE,
     "not an allowed model file path"),
]  # fmt: skip


def test_a_wrong_upload_is_a_422_and_leaves_nothing_behind(aiml: RunningAiml) -> None:
    with aiml.client() as client:
        for body, headers, says in WRONG:
            answer = client.post("/admin/models/register", content=body, headers=headers)
            assert answer.status_code == 422, (says, answer.text)
            assert says in answer.json()["error"]["message"], (says, answer.text)
    assert uploads_left(aiml) == []


def test_a_streamed_upload_registers_what_arrived(aiml: RunningAiml) -> None:
    def pieces() -> object:  # chunked, split across part boundaries
        body = field("registered_name", "streamed") + field("alias", "prod") + GGUF + END
        for start in range(0, len(body), 7):
            yield body[start : start + 7]

    with aiml.client() as client:
        created = client.post("/admin/models/register", content=pieces(), headers=TYPE)
        assert created.status_code == 201, created.text
        assert created.json()["alias"] == "prod"
        again = client.post(
            "/admin/models/register",
            content=field("registered_name", "streamed") + GGUF + END,
            headers=TYPE,
        )
        assert again.json()["created"] is False  # the same bytes arrived
    assert uploads_left(aiml) == []


REFUSED = [
    (file("files", "a", b"x") + file("files", "a/b", b"y"), "'a/b' would be inside 'a'"),
    (file("files", "a/b", b"x") + file("files", "a", b"y"), "'a' is the folder of 'a/b'"),
    # The same on a disk that ignores case (macOS, Windows): refused by name there too.
    (file("files", "a", b"x") + file("files", "A/b", b"y"), "'A/b' would be inside 'a'"),
    (file("files", "A/b", b"x") + file("files", "a", b"y"), "'a' is the folder of 'A/b'"),
    (GGUF + file("files", "M.gguf", GGUF_HEADER), "'M.gguf' and 'm.gguf' differ only by case"),
    # A path the disk refuses (a name over 255 bytes): a 422 naming it, not a 500.
    (file("files", "n" * 300 + ".gguf", GGUF_HEADER), f"'{'n' * 300}.gguf' cannot be written"),
    (file("files", "m.gguf", b"GGU"), "m.gguf is 3 bytes: too short for a GGUF header"),
    (file("files", "m.gguf", b"PK\x03\x04" + bytes(64)), "m.gguf is not a GGUF file"),
    (file("files", "m.gguf", b"GGUF" + struct.pack("<IQQ", 1, 0, 0)), "GGUF version 1"),
    (file("files", "m.gguf", b"GGUF" + struct.pack("<IQQ", 3, 1 << 40, 0)), "is corrupt"),
]


def test_files_that_cannot_be_a_model_are_a_422_naming_them(aiml: RunningAiml) -> None:
    with aiml.client() as client:
        for files, says in REFUSED:
            body = field("registered_name", "m") + files + END
            answer = client.post("/admin/models/register", content=body, headers=TYPE)
            assert answer.status_code == 422, (says, answer.text)
            assert says in answer.json()["error"]["message"], (says, answer.text)
        assert client.get("/models/registered_in_mlflow").json()["models"] == []
    assert uploads_left(aiml) == []


def test_onnx_files_that_are_not_onnx_are_a_422_at_registration(
    aiml: RunningAiml, tmp_path: Path
) -> None:
    """Not at first use, as a 500 model_load_failed: a PNG named model.onnx, and a real
    ONNX (Silero VAD) cut short; the whole one registers."""
    vad = next(model for model in BUNDLED if model.registered_name == "silero-vad")
    real = vad.locate(tmp_path).read_bytes()
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + struct.pack(">II", 32, 16) + bytes(9)
    refused = [
        (png, "model.onnx is not an ONNX model"),
        (real[: len(real) // 2], "model.onnx is cut short"),
    ]
    with aiml.client() as client:
        for content, says in refused:
            files = field("task", "vad") + file("files", "model.onnx", content)
            body = field("registered_name", "m") + files + END
            answer = client.post("/admin/models/register", content=body, headers=TYPE)
            assert answer.status_code == 422, (says, answer.text)
            assert says in answer.json()["error"]["message"], (says, answer.text)
        assert client.get("/models/registered_in_mlflow").json()["models"] == []
        files = field("task", "vad") + file("files", "model.onnx", real)
        body = field("registered_name", "vad") + files + END
        created = client.post("/admin/models/register", content=body, headers=TYPE)
        assert created.status_code == 201, created.text
    assert uploads_left(aiml) == []
