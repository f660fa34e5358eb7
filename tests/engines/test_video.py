"""Video decoding (bounded, sampled, flat in memory) and scene detection, on videos made here."""

from __future__ import annotations

import io
import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aiml.engines.media.audio import RATE
from aiml.engines.media.scenes import detect_scenes
from aiml.engines.media.video import audio_of, probe, sample_frames
from aiml.errors import InvalidRequest, PayloadTooLarge
from tests.fakes import videos
from tests.fakes.media_files import huge_png, tiny_pdf, wav

FORMATS = ["mp4", "mkv", "webm", "mov"]
DETECTORS = ["content", "adaptive"]


@pytest.fixture(scope="module")
def cards() -> dict[str, bytes]:
    return {fmt: videos.card_video(fmt=fmt) for fmt in FORMATS}


@pytest.fixture(scope="module")
def long_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 minutes at 320x240 and 2 fps (2400 frames, 0.26 MB), written to disk once (~2 s)."""
    path = tmp_path_factory.mktemp("video") / "long.mkv"
    return videos.long_video(path, fps=2, size=(320, 240))


@pytest.mark.parametrize("detector", DETECTORS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_cuts_are_found_within_a_tenth_of_a_second(
    cards: dict[str, bytes], fmt: str, detector: str
) -> None:
    scenes = detect_scenes(
        sample_frames(cards[fmt], max_seconds=60, fps=10),
        detector=detector,  # type: ignore[arg-type]
        end_s=probe(cards[fmt]).duration_s,
    )
    expected = videos.cuts()
    assert len(scenes) == len(expected) + 1
    for scene, cut in zip(scenes[1:], expected, strict=True):
        assert abs(scene.start_s - cut) <= 0.1, (scene, cut)
    assert scenes[0].start_s == 0.0
    assert abs(scenes[-1].end_s - sum(seconds for *_, seconds in videos.CARDS)) <= 0.1
    for before, after in itertools.pairwise(scenes):
        assert before.end_s == after.start_s


def test_each_scene_has_a_jpeg_keyframe_of_its_own_card(cards: dict[str, bytes]) -> None:
    scenes = detect_scenes(sample_frames(cards["mp4"], max_seconds=60, fps=15))
    for scene, (_, colour, _) in zip(scenes, videos.CARDS, strict=True):
        assert scene.start_s < scene.keyframe_s < scene.end_s
        image = Image.open(io.BytesIO(scene.keyframe_jpeg))
        assert image.format == "JPEG" and image.size == (320, 240)
        corner = np.asarray(image.convert("RGB"))[10, 10].astype(int)
        assert np.abs(corner - colour).max() < 20, (scene, corner, colour)
    indexes = [scene.keyframe_index for scene in scenes]
    assert indexes == sorted(indexes)


@pytest.mark.parametrize("detector", DETECTORS)
@pytest.mark.parametrize("make", [videos.pan_video, videos.fade_video], ids=["pan", "fade"])
def test_a_slow_pan_or_a_fade_is_one_scene(make: object, detector: str) -> None:
    clip = make()  # type: ignore[operator]
    scenes = detect_scenes(sample_frames(clip, max_seconds=60), detector=detector)  # type: ignore[arg-type]
    assert [(s.start_s, round(s.end_s)) for s in scenes] == [(0.0, 4)]


def test_the_threshold_is_an_option(cards: dict[str, bytes]) -> None:
    frames = list(sample_frames(cards["mkv"], max_seconds=60))
    assert len(detect_scenes(iter(frames), threshold=200.0)) == 1  # no cut scores that much
    assert len(detect_scenes(iter(frames), threshold=20.0)) == 4
    assert len(detect_scenes(iter(frames), min_scene_s=3.0)) == 2  # 1.0 s, then 2.4 s too soon
    assert detect_scenes(iter([])) == []
    with pytest.raises(InvalidRequest):
        detect_scenes(iter(frames), detector="histogram")  # type: ignore[arg-type]


def test_frames_are_sampled_small_and_rgb(cards: dict[str, bytes]) -> None:
    frames = list(sample_frames(cards["mp4"], max_seconds=60, fps=5, max_side=160))
    assert 24 <= len(frames) <= 26  # 5 s at 5 of the video's 15 frames a second
    times = [at for at, _ in frames]
    assert all(0.15 < b - a < 0.25 for a, b in itertools.pairwise(times))
    first = frames[0][1]
    assert first.shape == (120, 160, 3) and first.dtype == np.uint8
    assert np.abs(first[5, 5].astype(int) - (200, 30, 30)).max() < 20  # red card, as RGB
    every = list(sample_frames(cards["mp4"], max_seconds=60, fps=30))
    assert len(every) == 75  # asking for more than the video has gives each frame once


def test_probe_reads_the_header(cards: dict[str, bytes], tmp_path: Path) -> None:
    info = probe(cards["webm"])
    assert (info.width, info.height, info.codec, info.has_audio) == (320, 240, "vp8", False)
    assert info.fps == 15.0 and info.duration_s is not None and abs(info.duration_s - 5) < 0.1
    path = tmp_path / "cards.mov"
    path.write_bytes(cards["mov"])
    assert probe(path).codec == "mpeg4"
    assert len(list(sample_frames(str(path), max_seconds=60))) == 50


NOT_VIDEO = {
    "empty": b"",
    "random bytes": bytes(range(256)) * 8,
    "a PNG": videos.card_png(),
    "a JPEG": videos.card_png("JPEG"),
    "a PNG declaring 100000x100000": huge_png(),
    "a WAV": wav(1.0),
    "a PDF": tiny_pdf(),
}


@pytest.mark.parametrize("kind", list(NOT_VIDEO))
def test_what_is_not_a_video_is_refused_before_any_frame(kind: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        next(sample_frames(NOT_VIDEO[kind], max_seconds=60))
    assert refused.value.status_code == 422 and refused.value.param == "video"
    with pytest.raises(InvalidRequest):
        probe(NOT_VIDEO[kind])


@pytest.mark.parametrize("fmt", ["mkv", "webm"])
def test_a_truncated_video_gives_its_frames_then_a_422(cards: dict[str, bytes], fmt: str) -> None:
    whole = cards[fmt]
    got: list[float] = []
    with pytest.raises(InvalidRequest, match="truncated"):
        _collect(sample_frames(whole[: len(whole) * 6 // 10], max_seconds=60), got)
    assert 1.5 < got[-1] < 3.5  # the frames before the cut came


def test_an_mp4_cut_short_is_refused(cards: dict[str, bytes], tmp_path: Path) -> None:
    whole = cards["mp4"]  # its index (moov) is written at its end, so a cut loses it
    with pytest.raises(InvalidRequest):
        next(sample_frames(whole[: len(whole) // 2], max_seconds=60))
    # With its index first (faststart): the frames before the cut, then a 422.
    path = tmp_path / "faststart.mp4"
    videos.card_video(path=path)
    whole = path.read_bytes()
    assert whole[4:8] == b"ftyp" and b"moov" in whole[:4096]
    got: list[float] = []
    with pytest.raises(InvalidRequest, match="truncated"):
        _collect(sample_frames(whole[: len(whole) * 6 // 10], max_seconds=60), got)
    assert 1.5 < got[-1] < 3.5


def test_a_video_past_the_limit_is_a_413(cards: dict[str, bytes]) -> None:
    # Its header says 5 s: refused before a frame is decoded.
    with pytest.raises(PayloadTooLarge) as refused:
        next(sample_frames(cards["mp4"], max_seconds=3))
    assert refused.value.status_code == 413 and "AIML_MAX_VIDEO_S" in str(refused.value)
    # Within the header's margin: found while decoding, after the frames within the limit.
    got: list[float] = []
    with pytest.raises(PayloadTooLarge):
        _collect(sample_frames(cards["mkv"], max_seconds=4.5), got)
    assert 4.3 < got[-1] <= 4.5


def test_the_audio_track_at_16_khz(tmp_path: Path) -> None:
    clip = videos.card_video(fmt="mp4", tone=True)
    samples = audio_of(clip, max_seconds=60)
    assert samples.dtype == np.float32 and abs(samples.size / RATE - 5.0) < 0.1
    spectrum = np.abs(np.fft.rfft(samples[RATE : 2 * RATE]))
    assert abs(int(np.argmax(spectrum)) - 440) <= 2  # 1 s of samples: one bin per Hz
    path = tmp_path / "tone.webm"
    path.write_bytes(videos.card_video(fmt="webm", tone=True))
    assert abs(audio_of(path, max_seconds=60).size / RATE - 5.0) < 0.1
    with pytest.raises(PayloadTooLarge):
        audio_of(path, max_seconds=2)
    assert audio_of(videos.card_video(), max_seconds=60).size == 0  # no audio track


def _collect(frames: Iterator[tuple[float, np.ndarray]], times: list[float]) -> None:
    """Each frame's time into ``times``, kept there when the iterator raises."""
    for at, _ in frames:
        times.append(at)


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def test_twenty_minutes_decode_in_flat_memory(long_video: Path) -> None:
    assert probe(long_video).duration_s == 1200.0
    started = time.perf_counter()
    count, rss = 0, {}
    at, frame = 0.0, np.zeros(0)
    for at, frame in sample_frames(long_video, max_seconds=1800, fps=2, max_side=320):  # noqa: B007
        count += 1
        if count in (120, 2400):  # after a minute, and at the end
            rss[count] = _rss_mib()
    elapsed = time.perf_counter() - started
    assert count == 2400 and frame.shape == (240, 320, 3) and abs(at - 1199.5) < 0.01
    growth = rss[2400] - rss[120]
    print(f"\n20 min at 320x240, 2 fps, every frame: {1200 / elapsed:.0f} s of video per s, "
          f"RSS {rss[120]:.1f} -> {rss[2400]:.1f} MiB")  # fmt: skip
    assert growth < 8, rss  # the 19 minutes after the first hold nothing more


def test_scene_detection_speed(long_video: Path, cards: dict[str, bytes]) -> None:
    started = time.perf_counter()
    scenes = detect_scenes(sample_frames(long_video, max_seconds=1800, fps=2, max_side=320))
    long_rate = 1200 / (time.perf_counter() - started)
    assert len(scenes) == 120  # a colour change every 10 s
    # Red, green, blue, again and again (yellow to red scores under the default threshold).
    clip = videos.card_video(videos.CARDS[:3] * 8)  # 28.8 s at 320x240, 15 fps
    started = time.perf_counter()
    found = detect_scenes(sample_frames(clip, max_seconds=60, fps=10))
    card_rate = 28.8 / (time.perf_counter() - started)
    assert len(found) == 24
    print(f"\nscene detection: {long_rate:.0f} s of video per s (320x240 at 2 fps), "
          f"{card_rate:.0f} s per s (320x240 at 10 fps)")  # fmt: skip
