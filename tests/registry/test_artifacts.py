"""Registering model files and the verified local artifact cache, on a real registry."""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
from pathlib import Path

import pytest

from aiml.errors import InvalidRequest, ModelLoadFailed
from aiml.registry.artifacts import CONTENT_TAG, ArtifactCache, build_manifest, safe_relpath
from tests.conftest import ModelFiles, Registry


def test_gguf_registration_is_idempotent_by_content(
    registry: Registry, model_files: ModelFiles
) -> None:
    first = registry.register_files(model_files.smollm2, "smol", task="chat", alias="prod")
    assert first.created
    tags = first.version.tags
    assert tags["inference_engine"] == "llamacpp"
    assert tags["inference_task"] == "chat"
    assert tags["gguf_file"] == model_files.smollm2.name
    assert len(tags[CONTENT_TAG]) == 64

    again = registry.register_files(model_files.smollm2, "smol", task="chat")
    assert not again.created
    assert again.version.version == first.version.version
    forced = registry.register_files(model_files.smollm2, "smol", task="chat", force=True)
    assert forced.created
    assert forced.version.version == first.version.version + 1
    versions = registry.client.search_model_versions("name='smol'")
    assert len(versions) == 2


def test_hf_folder_task_comes_from_the_model(registry: Registry, model_files: ModelFiles) -> None:
    embedder = registry.register_files(model_files.minilm, "minilm")
    assert embedder.version.tags["inference_task"] == "embeddings"
    assert embedder.version.tags["inference_engine"] == "transformers"
    classifier = registry.register_files(model_files.tiny_classifier, "clf")
    assert classifier.version.tags["inference_task"] == "text-classification"
    lm = registry.register_files(model_files.tiny_lm_a, "lm")
    assert lm.version.tags["inference_task"] == "text-generation"


def test_pickles_are_never_registered(
    registry: Registry, model_files: ModelFiles, tmp_path: Path
) -> None:
    folder = shutil.copytree(model_files.tiny_lm_a, tmp_path / "with-pickle")
    (folder / "pytorch_model.bin").write_bytes(b"pickle would run code")
    registration = registry.register_files(folder, "lm")
    assert registration.skipped == ("pytorch_model.bin",)
    (folder / "model.safetensors").unlink()
    with pytest.raises(InvalidRequest, match=r"no \.safetensors"):
        registry.register_files(folder, "lm2")
    with pytest.raises(InvalidRequest, match="served by 'llamacpp'"):
        registry.register_files(model_files.smollm2, "x", engine="transformers")


def _package_onnx_files() -> list[Path]:
    """The real ONNX models the silero-vad and rapidocr-onnxruntime packages ship."""
    found = []
    for package in ("silero_vad", "rapidocr_onnxruntime"):
        spec = importlib.util.find_spec(package)
        assert spec is not None and spec.origin is not None, package
        found += sorted(Path(spec.origin).parent.rglob("*.onnx"))
    return found


def test_onnx_files_are_checked_at_registration(tmp_path: Path) -> None:
    """Real ONNX models pass; a PNG named .onnx, and a real one cut short anywhere (its
    header, inside its graph, before its opset_import), are refused naming the file."""
    real = _package_onnx_files()
    assert len(real) >= 4
    for path in real:
        manifest, _, _ = build_manifest(path)
        assert manifest.format == "onnx", path
    whole = real[0].read_bytes()
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(17)
    bad = tmp_path / "model.onnx"
    for content in (b"", png, whole[:1], whole[:8], whole[: len(whole) // 2], whole[:-1]):
        bad.write_bytes(content)
        with pytest.raises(InvalidRequest, match=r"model\.onnx (is|is not) ") as refused:
            build_manifest(bad)
        assert refused.value.param == "path", refused.value
    folder = tmp_path / "ocr"  # an ONNX folder: each .onnx in it is checked
    folder.mkdir()
    shutil.copy(real[-1], folder / "det.onnx")
    (folder / "rec.onnx").write_bytes(whole[:-4])
    with pytest.raises(InvalidRequest, match=r"rec\.onnx is cut short"):
        build_manifest(folder)


@pytest.mark.parametrize(
    "path",
    ["../x", "/etc/passwd", "a/../../b", "", ".", "a\\\\b", "~/x", "a//b/" + "c/" * 9],
)
def test_unsafe_paths_are_refused(path: str) -> None:
    with pytest.raises(InvalidRequest):
        safe_relpath(path)


def test_cache_downloads_once_and_is_reused_after_restart(
    registry: Registry, model_files: ModelFiles, tmp_path: Path
) -> None:
    version = registry.register_files(model_files.tiny_lm_a, "lm").version
    asyncio.run(_fetch_twice_and_damage(registry, tmp_path, version.tags[CONTENT_TAG]))


async def _fetch_twice_and_damage(registry: Registry, tmp_path: Path, content: str) -> None:
    cache = ArtifactCache(tmp_path / "cache", registry.adapter())
    folders = await asyncio.gather(
        *(cache.fetch("lm", 1, content_sha256=content) for _ in range(10))
    )
    assert {str(f) for f in folders} == {str(tmp_path / "cache" / "lm" / "1")}
    assert cache.downloads == 1
    assert (folders[0] / "model.safetensors").is_file()

    restarted = ArtifactCache(tmp_path / "cache", registry.adapter())
    await restarted.fetch("lm", 1, content_sha256=content)
    assert restarted.downloads == 0

    (folders[0] / "model.safetensors").write_bytes(b"truncated")  # damaged on disk
    await restarted.fetch("lm", 1, content_sha256=content)
    assert restarted.downloads == 1
    assert (folders[0] / "model.safetensors").stat().st_size > 1000


def test_artifacts_that_do_not_match_the_registry_are_refused(
    registry: Registry, model_files: ModelFiles, tmp_path: Path
) -> None:
    registry.register_files(model_files.tiny_lm_a, "lm")
    asyncio.run(_fetch_with_wrong_hash(registry, tmp_path))


async def _fetch_with_wrong_hash(registry: Registry, tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "cache", registry.adapter())
    with pytest.raises(ModelLoadFailed, match="content hash"):
        await cache.fetch("lm", 1, content_sha256="0" * 64)
    assert not (tmp_path / "cache" / "lm" / "1").exists()
    with pytest.raises(InvalidRequest):
        cache.file("lm", 1, "../../../etc/passwd")
    with pytest.raises(InvalidRequest):
        cache.folder("../../etc", 1)
