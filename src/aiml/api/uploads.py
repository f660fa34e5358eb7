"""Multipart uploads written to disk as they arrive, never held whole in memory.

python-multipart's streaming parser (the one Starlette's own form parsing uses) hands over
each part in pieces as the body streams in; a file part goes straight into the staging
folder through a 1 MiB buffer, written by a worker thread. Starlette's ``request.form()``
would spool every file into the system temp folder instead (often a RAM-backed tmpfs), for
the route to copy it once more. Fields are small and checked as soon as their name is known,
so a wrong form is refused before its files are written.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import anyio.to_thread
from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from starlette.requests import ClientDisconnect, Request

from aiml.errors import InvalidRequest, PayloadTooLarge
from aiml.inference.tasks.base import text_problem
from aiml.registry.artifacts import safe_relpath

__all__ = ["Upload", "receive_upload"]

_FLUSH_BYTES = 1 << 20  # file data held before a write; the most a file part holds in memory
_MAX_FIELD_BYTES = 64 << 10
_MAX_PARTS = 1000
_OUT_OF_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


@dataclass
class Upload:
    """The form's fields, and the relative paths of the files written under the folder."""

    fields: dict[str, str] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)


async def receive_upload(
    request: Request, folder: Path, *, fields: frozenset[str], files: str
) -> Upload:
    """Read a ``multipart/form-data`` body: fields named in ``fields``, files in ``files``.

    Each file part's file name is its path under ``folder`` (``1_Pooling/config.json``).
    """
    kind, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if kind.lower() != b"multipart/form-data" or not boundary:
        raise InvalidRequest("send the model as multipart/form-data", param=files)
    events: list[tuple[str, bytes]] = []  # what the parser found in the latest chunk

    def piece(kind: str) -> Callable[[bytes, int, int], None]:
        return lambda data, start, end: events.append((kind, data[start:end]))

    def mark(kind: str) -> Callable[[], None]:
        return lambda: events.append((kind, b""))

    try:
        parser = MultipartParser(
            boundary,
            callbacks={
                "on_part_begin": mark("begin"),
                "on_header_field": piece("name"),
                "on_header_value": piece("value"),
                "on_header_end": mark("header"),
                "on_headers_finished": mark("headers"),
                "on_part_data": piece("data"),
                "on_part_end": mark("end"),
                "on_end": mark("done"),
            },
        )
    except FormParserError as exc:
        raise InvalidRequest(f"not a valid multipart body: {exc}", param=files) from None
    sink = _Sink(folder, fields, files)
    try:
        async for chunk in request.stream():
            parser.write(chunk)  # only parses; the callbacks just note what they found
            for event, data in events:
                await sink.handle(event, data)
            events.clear()
        parser.finalize()
    except ClientDisconnect:
        raise InvalidRequest("the upload ended before its last part", param=files) from None
    except FormParserError as exc:
        raise InvalidRequest(f"not a valid multipart body: {exc}", param=files) from None
    finally:
        await sink.close()
    if not sink.done:
        raise InvalidRequest("the multipart body has no closing boundary", param=files)
    return sink.upload


class _Sink:
    """Turns the parser's events into fields and files on disk."""

    def __init__(self, folder: Path, fields: frozenset[str], files: str) -> None:
        self.folder = folder
        self.allowed = fields
        self.files_field = files
        self.upload = Upload()
        self.done = False
        self._parts = 0
        self._headers: dict[bytes, bytes] = {}
        self._header = (bytearray(), bytearray())
        self._field: str | None = None  # the field part being read
        self._value = bytearray()
        self._file: BinaryIO | None = None  # the file part being written
        self._buffer = bytearray()
        # Keyed by the casefolded path, as a disk that ignores case (macOS, Windows) sees it.
        self._files: dict[str, str] = {}  # the paths of the files so far
        self._folders: dict[str, str] = {}  # each folder of those, with a file inside it

    async def handle(self, event: str, data: bytes) -> None:
        if event == "data":
            if self._file is not None:
                self._buffer += data
                if len(self._buffer) >= _FLUSH_BYTES:
                    await self._flush()
            else:
                self._value += data
                if len(self._value) > _MAX_FIELD_BYTES:
                    raise PayloadTooLarge(
                        f"field {self._field!r} is over {_MAX_FIELD_BYTES} bytes", param=self._field
                    )
        elif event == "name":
            self._header[0].extend(data)
        elif event == "value":
            self._header[1].extend(data)
        elif event == "header":
            name, value = self._header
            self._headers[bytes(name).lower()] = bytes(value)
            self._header = (bytearray(), bytearray())
        elif event == "headers":
            await self._begin()
        elif event == "end":
            await self._end()
        elif event == "done":
            self.done = True
        elif event == "begin":
            self._parts += 1
            if self._parts > _MAX_PARTS:
                raise InvalidRequest(f"more than {_MAX_PARTS} parts", param=self.files_field)
            self._headers = {}

    async def _begin(self) -> None:
        disposition, options = parse_options_header(self._headers.get(b"content-disposition"))
        if disposition != b"form-data" or b"name" not in options:
            raise InvalidRequest("a part without 'Content-Disposition: form-data; name=...'")
        name = _text(options[b"name"], "a field name")
        filename = options.get(b"filename")
        if filename is None:
            if name == self.files_field:
                raise InvalidRequest(f"{name!r} takes files (parts with a file name)", param=name)
            if name not in self.allowed:
                raise InvalidRequest(f"unknown field {name!r}", param=name)
            if name in self.upload.fields:
                raise InvalidRequest(f"field {name!r} given twice", param=name)
            self._field = name
            self._value.clear()
            return
        if name != self.files_field:
            raise InvalidRequest(f"files go in {self.files_field!r}, not {name!r}", param=name)
        relpath = safe_relpath(_text(filename, "a file name"))
        self._check_tree(relpath)
        self.upload.files.append(relpath)
        try:
            self._file = await anyio.to_thread.run_sync(_create, self.folder / relpath)
        except OSError as exc:
            if exc.errno in _OUT_OF_SPACE:  # the server's trouble, not the path's
                raise
            raise InvalidRequest(
                f"{relpath!r} cannot be written: {exc.strerror or exc}", param=self.files_field
            ) from None

    def _check_tree(self, relpath: str) -> None:
        """A path cannot be two files, or a file and a folder (``a``, then ``a/b``, or the
        reverse), here or on a disk that ignores case: refused by name here, before the disk
        would refuse it with an OS error."""
        key = relpath.casefold()
        if key in self._files:
            same = self._files[key]
            raise InvalidRequest(
                f"{relpath!r} uploaded twice"
                if same == relpath
                else f"{relpath!r} and {same!r} differ only by case",
                param=self.files_field,
            )
        if key in self._folders:
            inside = self._folders[key]
            raise InvalidRequest(
                f"{relpath!r} is the folder of {inside!r}, so it cannot be a file",
                param=self.files_field,
            )
        folders = [str(folder) for folder in PurePosixPath(relpath).parents][:-1]  # not "."
        for folder in folders:
            if folder.casefold() in self._files:
                raise InvalidRequest(
                    f"{relpath!r} would be inside {self._files[folder.casefold()]!r}, "
                    "which is a file",
                    param=self.files_field,
                )
        self._files[key] = relpath
        for folder in folders:
            self._folders.setdefault(folder.casefold(), relpath)

    async def _end(self) -> None:
        if self._file is not None:
            await self._flush()
            file, self._file = self._file, None
            await anyio.to_thread.run_sync(file.close)
        elif self._field is not None:
            self.upload.fields[self._field] = _text(bytes(self._value), f"field {self._field!r}")
            self._field = None

    async def _flush(self) -> None:
        if self._buffer and self._file is not None:
            await anyio.to_thread.run_sync(self._file.write, self._buffer)
            self._buffer.clear()

    async def close(self) -> None:
        """Close a file left open by a body that ended early (the caller removes the folder)."""
        if self._file is not None:
            file, self._file = self._file, None
            await anyio.to_thread.run_sync(file.close)


def _create(path: Path) -> BinaryIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("xb")


def _text(raw: bytes, what: str) -> str:
    """Header parameters come as latin-1 bytes of what the client sent: its UTF-8 text."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(f"{what} is not valid UTF-8") from None
    problem = text_problem(text)
    if problem is not None:
        raise InvalidRequest(f"{what}: {problem}")
    return text
