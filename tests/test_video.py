"""data_builder.video and data_builder.synthetic: frame-exact decoding, VFR times, resizing, bad input."""

from __future__ import annotations

import struct
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from data_builder.synthetic import (
    COLORS,
    SyntheticScene,
    make_sample_videos,
    read_frame_number,
    write_scene_video,
)
from data_builder.video import FrameCache, VideoReader, read_video_info, sample_candidates, uniform_indices
from pipeline.core.errors import VideoError

cv2 = pytest.importorskip("cv2")


def _cv2_sequential(path: Path) -> tuple[list[np.ndarray], list[float]]:
    """Every frame (RGB) and its POS_MSEC time by plain sequential decoding with OpenCV: an independent reference."""
    cap = cv2.VideoCapture(str(path))
    frames, times = [], []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        times.append(cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0)
        frames.append(frame[:, :, ::-1])
    cap.release()
    return frames, times


@pytest.fixture(scope="module")
def two_scenes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same 100-frame, two-scene synthetic video as .mp4 (mp4v) and .avi (MJPG)."""
    out = tmp_path_factory.mktemp("synthetic")
    paths = {}
    for ext in (".mp4", ".avi"):
        scenes = [
            SyntheticScene("a circle on red", COLORS["red"], "circle", 5.0),
            SyntheticScene("a star on blue", COLORS["blue"], "star", 5.0),
        ]
        paths[ext] = out / f"two{ext}"
        assert write_scene_video(paths[ext], scenes, fps=10, seed=3) == [50]
    return paths


# ---------------------------------------------------------------------------------------------------
# Real videos
# ---------------------------------------------------------------------------------------------------


def test_counter_random_access_is_frame_exact(shared_data: Path) -> None:
    path = shared_data / "videos" / "counter.mp4"
    ref, _ = _cv2_sequential(path)
    order = [17, 3, 29, 0, 3, 12]  # out of order, with a duplicate: decoded once, returned as asked
    with VideoReader(path) as reader:
        assert reader.info.num_frames == len(ref) == 30
        frames = reader.get_frames(order)
        np.testing.assert_allclose(reader.timestamps_s, np.arange(30) * 0.1, atol=1e-6)
    for frame, i in zip(frames, order, strict=True):
        # Frame i is bit-identical to the i-th frame of a sequential decode, and differs from its neighbours.
        assert np.array_equal(frame, ref[i])
        for j in (i - 1, i + 1):
            if 0 <= j < 30:
                assert not np.array_equal(frame, ref[j])


def test_vfr_timestamps_are_presentation_times(shared_data: Path) -> None:
    path = shared_data / "videos" / "goldeneye-vfr-drop3.mp4"
    info = read_video_info(path)
    assert info.vfr and info.num_frames == 160
    _, cv_times = _cv2_sequential(path)
    with VideoReader(path) as reader:
        ts = reader.timestamps_s
    # Every third frame of the 23.976 fps source was dropped: gaps of 1 and 2 source frames alternate.
    np.testing.assert_allclose(ts[:4], [0.0, 1001 / 24000, 3 * 1001 / 24000, 4 * 1001 / 24000], atol=1e-4)
    np.testing.assert_allclose(ts, np.asarray(cv_times) - cv_times[0], atol=2e-3)
    assert ts[-1] == pytest.approx(9.9263, abs=1e-3)  # index/fps would say 159 / 23.976 = 6.63 s
    assert info.duration_s == pytest.approx(9.968, abs=1e-2)
    idx, times = sample_candidates(path, 8)
    assert idx == uniform_indices(160, 8)
    assert times == [pytest.approx(float(ts[i])) for i in idx]


def test_constant_rate_file_is_not_vfr_and_short_stream_duration(shared_data: Path) -> None:
    info = read_video_info(shared_data / "videos" / "bikes.mp4")
    assert (info.num_frames, info.fps, info.vfr, info.width, info.height) == (250, 25.0, False, 640, 272)
    # The stream is 0.96 s although the container says 2.035 s: the stream's own duration is the truth.
    assert read_video_info(shared_data / "videos" / "delayed_start.mp4").duration_s == pytest.approx(0.96)


def test_mkv_reads(shared_data: Path) -> None:
    with VideoReader(shared_data / "videos" / "issue-236-split-copy.mkv", width=320) as reader:
        assert reader.info.num_frames == 48 and not reader.info.vfr
        assert reader.get_frames([0, 47]).shape == (2, 180, 320, 3)


def test_rotation_is_applied_and_resize_keeps_orientation(shared_data: Path) -> None:
    path = shared_data / "videos" / "issue-134-rotate.mp4"
    info = read_video_info(path)
    assert (info.rotation, info.width, info.height) == (90, 544, 1280)  # stored 1280x544, displayed upright
    with VideoReader(path) as reader:
        full = reader.get_frames([50])[0]
    with VideoReader(path, width=136) as reader:
        small = reader.get_frames([50])[0]
    assert full.shape == (1280, 544, 3) and small.shape == (320, 136, 3)
    ref = cv2.resize(full, (136, 320), interpolation=cv2.INTER_AREA).astype(int)
    assert np.abs(ref - small).mean() < 5  # same picture, same way up
    assert np.abs(ref - small[::-1, ::-1]).mean() > 20


# ---------------------------------------------------------------------------------------------------
# Synthetic videos, both containers
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".mp4", ".avi"])
def test_synthetic_video_round_trips_frame_exact(two_scenes: dict[str, Path], ext: str) -> None:
    with VideoReader(two_scenes[ext]) as reader:
        assert reader.info.num_frames == 100 and reader.info.fps == pytest.approx(10.0)
        frames = reader.get_frames(range(100))
    assert [read_frame_number(f) for f in frames] == list(range(100))
    red, blue = frames[10].reshape(-1, 3).mean(0), frames[60].reshape(-1, 3).mean(0)
    assert red[0] > red[2] and blue[2] > blue[0]  # scene 1 red, scene 2 blue
    assert not np.array_equal(frames[10], frames[11])  # motion and noise: no two frames alike


def test_resized_decode_and_bounded_batches(two_scenes: dict[str, Path]) -> None:
    calls: list[int] = []
    with VideoReader(two_scenes[".mp4"], max_pixels=64 * 48) as reader:
        assert reader.frame_size == (64, 48) and reader.info.width == 160  # info keeps the stored size
        real = reader._decode
        reader._decode = lambda idx: (calls.append(len(idx)), real(idx))[1]
        seen = []
        for chunk, frames in reader.iter_batches(range(0, 100, 3), batch_size=8):
            assert frames.shape == (len(chunk), 48, 64, 3)
            seen += [read_frame_number(f) for f in frames]
    assert seen == list(range(0, 100, 3))
    assert max(calls) <= 8  # never more than one batch decoded at once


def test_synthetic_is_deterministic_and_queries_point_at_one_scene(tmp_path: Path) -> None:
    a = make_sample_videos(tmp_path / "a", 2, seed=7)
    b = make_sample_videos(tmp_path / "b", 2, seed=7)
    for va, vb in zip(a, b, strict=True):
        assert [s.label for s in va.scenes] == [s.label for s in vb.scenes]
        assert va.cut_frames == vb.cut_frames == [s.start_frame for s in va.scenes[1:]]
        with VideoReader(va.path) as ra, VideoReader(vb.path) as rb:
            assert np.array_equal(ra.get_frames([0, va.num_frames - 1]), rb.get_frames([0, vb.num_frames - 1]))
        assert len(va.captions) == len(va.scenes)
        for q in va.queries:
            scene = va.scenes[q.scene_index]
            answer = q.options[q.answer]
            # The answer is a property of exactly one scene of the video.
            assert sum(answer in (s.shape, s.color_name) for s in va.scenes) == 1
            assert answer in (scene.shape, scene.color_name)
            assert (q.start_s, q.end_s) == (scene.start_s, scene.end_s)
            assert q.to_query(va.video_id).answer == q.answer
    assert [s.label for s in make_sample_videos(tmp_path / "c", 1, seed=8)[0].scenes] != [s.label for s in a[0].scenes]


# ---------------------------------------------------------------------------------------------------
# Candidates, uniform indices, cache
# ---------------------------------------------------------------------------------------------------


@given(st.integers(1, 5000), st.integers(1, 600))
def test_uniform_indices_are_sorted_unique_midpoints(n: int, count: int) -> None:
    idx = uniform_indices(n, count)
    assert len(idx) == min(n, count)
    assert idx == sorted(set(idx)) and 0 <= idx[0] and idx[-1] < n
    if count < n:
        mids = [Fraction(2 * k + 1, 2) * n / count for k in range(count)]
        assert all(i <= m < i + 1 for i, m in zip(idx, mids, strict=True))  # the frame at each segment's midpoint


def test_frame_cache_reuses_frames_and_bounds_memory(two_scenes: dict[str, Path]) -> None:
    cache = FrameCache(max_videos=1, max_bytes=10 * 64 * 48 * 3)
    imgs = cache.images(two_scenes[".mp4"], [5, 1, 5], max_pixels=64 * 48)
    assert [im.size for im in imgs] == [(64, 48)] * 3
    assert [read_frame_number(np.asarray(im)) for im in imgs] == [5, 1, 5]
    assert (cache.hits, cache.misses) == (1, 2)
    cache.images(two_scenes[".mp4"], [1, 5], max_pixels=64 * 48)
    assert (cache.hits, cache.misses) == (3, 2)
    cache.images(two_scenes[".avi"], list(range(20)), max_pixels=64 * 48)  # second video evicts the first reader
    assert len(cache._readers) == 1 and cache._bytes <= 20 * 64 * 48 * 3
    cache.images(two_scenes[".avi"], [0], max_pixels=64 * 48)
    assert cache._bytes <= 10 * 64 * 48 * 3  # back under budget once the big request is no longer protected


# ---------------------------------------------------------------------------------------------------
# Bad input: one clear VideoError naming the file and the problem
# ---------------------------------------------------------------------------------------------------


def _boxes(data: bytes) -> list[tuple[str, int, int]]:
    out, i = [], 0
    while i < len(data):
        size, typ = struct.unpack(">I4s", data[i : i + 8])
        out.append((typ.decode("latin1"), i, size))
        i += size
    return out


def _faststart(data: bytes) -> bytes:
    """Move an MP4's index (moov) before its media data, as web video does: a truncated copy then still opens."""
    boxes = _boxes(data)
    _, mo, ms = next(b for b in boxes if b[0] == "moov")
    moov = bytearray(data[mo : mo + ms])
    pos = moov.find(b"stco")  # one video track: one chunk-offset table; shift every offset by len(moov)
    count = struct.unpack(">I", moov[pos + 8 : pos + 12])[0]
    for k in range(count):
        p = pos + 12 + 4 * k
        moov[p : p + 4] = struct.pack(">I", struct.unpack(">I", moov[p : p + 4])[0] + ms)
    ftyp = next(b for b in boxes if b[0] == "ftyp")
    rest = b"".join(data[o : o + s] for t, o, s in boxes if t not in ("ftyp", "moov"))
    return data[ftyp[1] : ftyp[1] + ftyp[2]] + bytes(moov) + rest


def _bad_files(tmp: Path, good: dict[str, Path]) -> dict[str, tuple[Path, str]]:
    cases: dict[str, tuple[Path, str]] = {}
    cases["missing"] = (tmp / "missing.mp4", "no such file")
    (tmp / "empty.mp4").write_bytes(b"")
    cases["empty"] = (tmp / "empty.mp4", "empty file")
    (tmp / "notes.mp4").write_text("this is not a video\n" * 50)
    cases["not a video"] = (tmp / "notes.mp4", "cannot be read as a video")
    mp4 = good[".mp4"].read_bytes()
    (tmp / "cut.mp4").write_bytes(mp4[: len(mp4) // 2])
    cases["truncated mp4"] = (tmp / "cut.mp4", "cannot be read as a video")
    fast = _faststart(mp4)
    (tmp / "cut_fast.mp4").write_bytes(fast[: int(len(fast) * 0.3)])
    cases["truncated faststart mp4"] = (tmp / "cut_fast.mp4", "truncated video")
    avi = good[".avi"].read_bytes()
    (tmp / "cut.avi").write_bytes(avi[: len(avi) // 2])
    cases["truncated avi"] = (tmp / "cut.avi", "truncated video")
    for ext, codec in ((".mp4", "mp4v"), (".avi", "MJPG")):
        writer = cv2.VideoWriter(str(tmp / f"zero{ext}"), cv2.VideoWriter_fourcc(*codec), 10, (160, 120))
        writer.release()
        cases[f"zero frames {ext}"] = (tmp / f"zero{ext}", "zero frames")
    return cases


def test_bad_files_raise_one_clear_error(tmp_path: Path, two_scenes: dict[str, Path]) -> None:
    assert _faststart(two_scenes[".mp4"].read_bytes())  # the helper itself produces a readable file:
    (tmp_path / "fast.mp4").write_bytes(_faststart(two_scenes[".mp4"].read_bytes()))
    assert read_video_info(tmp_path / "fast.mp4").num_frames == 100
    for case, (path, problem) in _bad_files(tmp_path, two_scenes).items():
        for open_it in (read_video_info, VideoReader, lambda p: sample_candidates(p, 4)):
            with pytest.raises(VideoError) as err:
                open_it(path)
            msg = str(err.value)
            assert str(path) in msg and problem in msg, f"{case}: {msg}"
            assert "\n" not in msg and "/github/" not in msg, f"{case}: {msg}"


def test_index_past_the_end(two_scenes: dict[str, Path]) -> None:
    with VideoReader(two_scenes[".avi"]) as reader:
        for bad in ([100], [-1], [0, 250]):
            with pytest.raises(VideoError, match=r"two\.avi: frame index -?\d+ is past the end \(video has 100 frames"):
                reader.get_frames(bad)
        with pytest.raises(VideoError, match="past the end"):
            next(reader.iter_batches([0, 1, 100], batch_size=2))  # checked before anything is decoded
    with pytest.raises(VideoError, match="past the end"):
        FrameCache().images(two_scenes[".avi"], [100])


def test_reported_size_matches_decoded_frames(shared_data: Path) -> None:
    """VideoInfo's size comes from the container (no decoding); it must be what the decoder hands out."""
    for path in sorted((shared_data / "videos").glob("*.m*")):
        info = read_video_info(path)
        with VideoReader(path) as reader:
            assert reader.get_frames([0]).shape == (1, info.height, info.width, 3), path.name
        with VideoReader(path, width=96) as reader:
            w, h = reader.frame_size
            assert reader.get_frames([0]).shape == (1, h, w, 3) and w == 96, path.name
            assert abs(h / w - info.height / info.width) < 0.05, path.name  # aspect kept
