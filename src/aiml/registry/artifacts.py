"""Model files in the registry: a manifest at registration, a verified local cache at serving.

Registration hashes every file into a manifest (``aiml_manifest.json``) logged beside the
files; its overall hash is the version tag ``aiml.content_sha256``, which makes registering
the same content twice a no-op. Serving downloads a version's files once, through MLflow's
artifact API, into ``<cache>/<name>/<version>``, checks them against the manifest and the
tag, and re-uses them across restarts.

Nothing that comes from the registry becomes a path outside the cache: names and versions
are validated, manifest paths must be plain relative paths, and symlinks are refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import anyio.to_thread

from aiml.errors import InvalidRequest, ModelLoadFailed, ModelNotServable

from .file_checks import check_model_file
from .mlflow import MlflowRegistry
from .references import validate_registry_name

__all__ = [
    "CONTENT_TAG",
    "MANIFEST_NAME",
    "ArtifactCache",
    "Manifest",
    "ManifestEntry",
    "Progress",
    "build_manifest",
    "safe_relpath",
]

MANIFEST_NAME = "aiml_manifest.json"
CONTENT_TAG = "aiml.content_sha256"
FORMAT_TAG = "aiml.format"
#: Weight formats that unpickle arbitrary code when loaded; never registered, never loaded.
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib"})
_COMPLETE = ".aiml-verified"
_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
_CHUNK = 1 << 20

#: Progress callback: (phase, bytes done, bytes in all).
Progress = Callable[[str, int, int], None]


def _no_progress(phase: str, done: int, total: int) -> None:
    return None


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class Manifest:
    """The files of one model version with their sizes and hashes."""

    format: str  # "gguf", "hf", "ct2" (CTranslate2) or "onnx"
    files: tuple[ManifestEntry, ...]

    @property
    def content_sha256(self) -> str:
        digest = hashlib.sha256()
        for entry in sorted(self.files, key=lambda e: e.path):
            digest.update(f"{entry.path}\0{entry.size}\0{entry.sha256}\n".encode())
        return digest.hexdigest()

    @property
    def total_bytes(self) -> int:
        return sum(entry.size for entry in self.files)

    def to_json(self) -> str:
        files = {e.path: {"size": e.size, "sha256": e.sha256} for e in self.files}
        return json.dumps({"format": self.format, "files": files}, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        raw = json.loads(text)
        files = tuple(
            ManifestEntry(safe_relpath(path), int(meta["size"]), str(meta["sha256"]))
            for path, meta in raw["files"].items()
        )
        return cls(format=str(raw["format"]), files=files)


def safe_relpath(text: str) -> str:
    """A plain relative POSIX path (``a/b.json``); anything else is refused."""
    path = PurePosixPath(text)
    parts = path.parts
    if (
        not parts
        or path.is_absolute()
        or "\\" in text
        or len(parts) > 8
        or not all(_PART.fullmatch(part) and part not in {".", ".."} for part in parts)
    ):
        raise InvalidRequest(f"{text!r} is not an allowed model file path", param="files")
    return str(path)


def build_manifest(
    source: Path, progress: Progress = _no_progress
) -> tuple[Manifest, dict[str, Path], list[str]]:
    """Hash a GGUF or ONNX file, or a Hugging Face, CTranslate2 or ONNX folder: (manifest,
    relpath -> file, skipped files)."""
    if source.is_file():
        fmt = _FILE_FORMATS.get(source.suffix.lower(), "")
        if not fmt:
            raise InvalidRequest(
                f"{source.name}: a model file must be a .gguf or an .onnx", param="path"
            )
        files, skipped = {safe_relpath(source.name): source}, list[str]()
        check_model_file(source, fmt)
    elif source.is_dir() and _is_ctranslate2(source):
        files, skipped = _folder_files(source, pickles=False), list[str]()
        fmt = "ct2"
    elif source.is_dir() and not (source / "config.json").exists() and any(source.glob("*.onnx")):
        files, skipped = _folder_files(source, pickles=True), list[str]()
        fmt = "onnx"
        for path in files.values():
            if path.suffix.lower() == ".onnx":
                check_model_file(path, fmt)
    elif source.is_dir():
        files, skipped = _hf_files(source)
        fmt = "hf"
    else:
        raise InvalidRequest(f"{source} is neither a file nor a folder", param="path")
    total = sum(path.stat().st_size for path in files.values())
    done = 0
    entries = []
    for rel, path in sorted(files.items()):
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
                done += len(chunk)
                progress("hashing", done, total)
        entries.append(ManifestEntry(rel, path.stat().st_size, digest.hexdigest()))
    return Manifest(format=fmt, files=tuple(entries)), files, skipped


#: Formats registered as one file, by suffix.
_FILE_FORMATS = {".gguf": "gguf", ".onnx": "onnx"}


def _is_ctranslate2(folder: Path) -> bool:
    """A CTranslate2 model (faster-whisper's format): ``model.bin`` is CTranslate2's own
    weights file, not a pickle, beside its vocabulary."""
    vocabulary = any((folder / f"vocabulary.{ext}").is_file() for ext in ("txt", "json"))
    return (folder / "model.bin").is_file() and vocabulary


def _folder_files(
    folder: Path, *, pickles: bool, skipped: list[str] | None = None
) -> dict[str, Path]:
    """A model folder's files by relative path; pickles go to ``skipped`` unless ``pickles``
    is False (a format whose ``.bin`` is not a pickle)."""
    files: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if any(part.startswith(".") for part in PurePosixPath(rel).parts):
            continue  # .git, .cache, .gitattributes
        if path.is_symlink():
            raise InvalidRequest(f"{rel} is a symlink; copy the file instead", param="path")
        if not path.is_file():
            continue
        if pickles and path.suffix.lower() in PICKLE_SUFFIXES:
            if skipped is not None:
                skipped.append(rel)  # pickles can run code on load: never registered
            continue
        files[safe_relpath(rel)] = path
    return files


def _hf_files(folder: Path) -> tuple[dict[str, Path], list[str]]:
    if not (folder / "config.json").is_file():
        raise InvalidRequest(f"{folder} has no config.json: not a Hugging Face model", param="path")
    skipped: list[str] = []
    files = _folder_files(folder, pickles=True, skipped=skipped)
    if not any(rel.endswith(".safetensors") for rel in files):
        raise InvalidRequest(
            f"{folder} has no .safetensors weights (pickled weights are refused)", param="path"
        )
    return files, skipped


class ArtifactCache:
    """A version's files, downloaded once into ``root/<name>/<version>`` and verified."""

    def __init__(self, root: Path, registry: MlflowRegistry) -> None:
        self.root = root
        self._registry = registry
        self._inflight: dict[tuple[str, int], asyncio.Future[Path]] = {}
        self.downloads = 0

    def folder(self, name: str, version: int) -> Path:
        validate_registry_name(name, param="model_name")
        folder = (self.root / name / str(int(version))).resolve()
        if not folder.is_relative_to(self.root.resolve()):  # belt and braces
            raise ModelNotServable(f"{name!r} cannot be cached", param="model_name")
        return folder

    def file(self, name: str, version: int, relpath: str) -> Path:
        """A file inside a cached version; ``relpath`` (a tag value) cannot leave the folder."""
        return self.folder(name, version) / safe_relpath(relpath)

    async def fetch(self, name: str, version: int, *, content_sha256: str | None) -> Path:
        """The verified local folder for a version, downloading it on first use only."""
        key = (name, version)
        future = self._inflight.get(key)
        if future is None:
            future = asyncio.ensure_future(self._fetch(name, version, content_sha256))
            self._inflight[key] = future
            future.add_done_callback(lambda done: self._inflight.pop(key, None))
        return await asyncio.shield(future)

    async def _fetch(self, name: str, version: int, content_sha256: str | None) -> Path:
        folder = self.folder(name, version)
        if await anyio.to_thread.run_sync(_reusable, folder, content_sha256):
            return folder
        staging = self.root / ".staging" / uuid.uuid4().hex
        staging.mkdir(parents=True, exist_ok=True)
        try:
            downloaded = await self._registry.download_version(name, version, staging)
            await anyio.to_thread.run_sync(_verify, downloaded, content_sha256)
            await anyio.to_thread.run_sync(_install, downloaded, folder)
            self.downloads += 1
        finally:
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(staging, ignore_errors=True))
        return folder


def _reusable(folder: Path, content_sha256: str | None) -> bool:
    """A folder verified before, still holding files of the recorded sizes."""
    marker = folder / _COMPLETE
    if not marker.is_file():
        return False
    try:
        manifest = Manifest.from_json((folder / MANIFEST_NAME).read_text())
    except (OSError, ValueError, KeyError):
        return False
    if content_sha256 is not None and marker.read_text().strip() != content_sha256:
        return False
    return all(
        (folder / e.path).is_file() and (folder / e.path).stat().st_size == e.size
        for e in manifest.files
    )


def _verify(folder: Path, content_sha256: str | None) -> None:
    try:
        manifest = Manifest.from_json((folder / MANIFEST_NAME).read_text())
    except (OSError, ValueError, KeyError, InvalidRequest) as exc:
        raise ModelLoadFailed(f"model artifacts have no valid {MANIFEST_NAME}: {exc}") from exc
    if content_sha256 is not None and manifest.content_sha256 != content_sha256:
        raise ModelLoadFailed("model artifacts do not match the registry's content hash")
    for current, dirs, names in os.walk(folder):
        for child in (*dirs, *names):
            if Path(current, child).is_symlink():
                raise ModelLoadFailed(f"model artifacts contain a symlink: {child}")
    for entry in manifest.files:
        path = folder / entry.path
        if not path.is_file() or path.stat().st_size != entry.size:
            raise ModelLoadFailed(f"model file {entry.path} is missing or truncated")
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
        if digest.hexdigest() != entry.sha256:
            raise ModelLoadFailed(f"model file {entry.path} does not match its sha256")
    (folder / _COMPLETE).write_text(manifest.content_sha256)


def _install(downloaded: Path, folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    os.replace(downloaded, folder)


def tags_for(manifest: Manifest, extra: Mapping[str, str]) -> dict[str, str]:
    return {CONTENT_TAG: manifest.content_sha256, FORMAT_TAG: manifest.format, **extra}
