"""data_builder.scenes and `kframes scenes`: accuracy on real videos with known cuts, post-processing, the command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data_builder.scenes import (
    blend_residual,
    detect_scenes,
    doubt_spans,
    doubt_window,
    frame_signals,
    hard_cuts,
    luma_histogram,
    scenes_from_signals,
    segment_video,
)
from data_builder.transnet import (
    load_model,
    predict,
    resolve_device,
    to_model_frames,
    transitions,
    video_reader_frames,
    window_spans,
)
from data_builder.synthetic import COLORS, SyntheticScene, make_sample_videos, write_scene_video
from data_builder.video import VideoReader, iter_luma_batches
from pipeline.cli.main import main
from pipeline.core.config import ScenesSection
from pipeline.core.contracts import VideoScenes


def _truth(shared: Path) -> dict:
    return json.loads((shared / "ground_truth.json").read_text())


def _covers(scenes: list, num_frames: int) -> None:
    """Scenes tile the video: contiguous, in order, first frame to last."""
    assert scenes[0].start_frame == 0 and scenes[-1].end_frame == num_frames
    for a, b in zip(scenes, scenes[1:], strict=False):
        assert a.end_frame == b.start_frame and a.end_s == b.start_s
    assert [s.index for s in scenes] == list(range(len(scenes)))


# ---------------------------------------------------------------------------------------------------
# Accuracy on real videos, with the defaults
# ---------------------------------------------------------------------------------------------------


def test_bikes_cuts_within_one_frame(shared_data: Path) -> None:
    truth = _truth(shared_data)["videos/bikes.mp4"]["cuts"]
    scenes = detect_scenes(shared_data / "videos" / "bikes.mp4")
    _covers(scenes, 250)
    found = [s.start_frame for s in scenes[1:]]
    assert len(found) == len(truth)
    assert all(abs(f - t) <= 1 for f, t in zip(found, truth, strict=True)), found
    assert all(s.boundary == "cut" for s in scenes[1:])


def test_goldeneye_vfr_cut_times_within_a_tenth_of_a_second(shared_data: Path) -> None:
    truth = _truth(shared_data)["videos/goldeneye-vfr-drop3.mp4"]["cut_times_s"]
    result = segment_video(shared_data / "videos" / "goldeneye-vfr-drop3.mp4")
    cuts = [s for s in result.scenes[1:] if s.boundary == "cut"]
    assert [s.start_s for s in cuts] == [pytest.approx(t, abs=0.1) for t in truth]
    # Scene times are the frames' presentation times, not frame / fps (which is seconds off on this file).
    with VideoReader(shared_data / "videos" / "goldeneye-vfr-drop3.mp4") as reader:
        assert [s.start_s for s in result.scenes] == [pytest.approx(reader.timestamps_s[s.start_frame]) for s in result.scenes]
    assert result.scenes[-1].end_s == pytest.approx(result.video.duration_s)


@pytest.mark.parametrize("name", ["bigbuckbunny.mp4", "fades.mp4"])
def test_no_hard_cut_on_one_shot_and_fades(shared_data: Path, name: str) -> None:
    scenes = detect_scenes(shared_data / "videos" / name)
    assert [s.start_frame for s in scenes if s.boundary == "cut"] == []


def test_fades_become_gradual_boundaries_at_the_black(shared_data: Path) -> None:
    scenes = detect_scenes(shared_data / "videos" / "fades.mp4")
    tool = _truth(shared_data)["videos/fades.mp4"]["fades_to_black_tool"]  # ThresholdDetector's fade points
    assert [s.boundary for s in scenes[1:]] == ["gradual"] * len(tool)
    assert all(abs(s.start_frame - t) <= 3 for s, t in zip(scenes[1:], tool, strict=True))
    # With fade handling off, flat-colour fades are still not cuts (the adaptive check), but nothing marks them.
    assert detect_scenes(shared_data / "videos" / "fades.mp4", ScenesSection(gradual="none"))[1:] == []


def test_testvideo_cuts_versus_fades(shared_data: Path) -> None:
    """Two hard cuts (30, 180) stay cuts; the fades through black (211, 332-394, 665-691) are gradual, not cuts."""
    scenes = detect_scenes(shared_data / "videos" / "testvideo.mp4")
    cuts = [s.start_frame for s in scenes if s.boundary == "cut"]
    gradual = [s.start_frame for s in scenes if s.boundary == "gradual"]
    assert cuts == [30, 180]
    assert len(gradual) == 3
    assert 205 <= gradual[0] <= 230 and 332 <= gradual[1] <= 410 and 665 <= gradual[2] <= 700


def test_rotated_video_cuts(shared_data: Path) -> None:
    scenes = detect_scenes(shared_data / "videos" / "issue-134-rotate.mp4")
    assert [s.start_frame for s in scenes[1:]] == _truth(shared_data)["videos/issue-134-rotate.mp4"]["cuts_tool"]


def test_candidates_are_exactly_scenedetects_histogram_detector(shared_data: Path) -> None:
    """Step 1 is HistogramDetector itself: same frames in, same cut candidates out."""
    from scenedetect import FrameTimecode
    from scenedetect.detectors import HistogramDetector

    cfg = ScenesSection(adaptive_ratio=None, gradual="none", threshold=0.05)
    with VideoReader(shared_data / "videos" / "bikes.mp4", width=cfg.downscale_width) as reader:
        frames = reader.get_frames(range(reader.info.num_frames))
    detector = HistogramDetector(threshold=cfg.threshold, bins=cfg.bins, min_scene_len=1)
    theirs = []
    for i, frame in enumerate(frames):
        theirs += [tc.frame_num for tc in detector.process_frame(FrameTimecode(i, 25.0), np.ascontiguousarray(frame[..., ::-1]))]
    ours = [b.frame for b in hard_cuts(frame_signals([frames[:100], frames[100:]], cfg), cfg)]
    assert ours == theirs and len(ours) > 5  # at this low threshold, motion frames are candidates too


def test_luma_histogram_is_histogram_detectors_after_its_colour_conversion(shared_data: Path) -> None:
    import cv2
    from scenedetect.detectors import HistogramDetector

    with VideoReader(shared_data / "videos" / "bikes.mp4", width=160) as reader:
        bgr = np.ascontiguousarray(reader.get_frames([40])[0][..., ::-1])
    y = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV)[..., 0]
    np.testing.assert_array_equal(luma_histogram(y, 256), HistogramDetector.calculate_histogram(bgr, bins=256))


def test_fast_luma_decoder_sees_every_frame_as_decord_does(shared_data: Path) -> None:
    """Every frame, in order, at the analysis width; luma within a few levels of BGR2YUV on decord's RGB frames."""
    import cv2

    path = shared_data / "videos" / "goldeneye-vfr-drop3.mp4"  # H.264 with dropped frames (VFR)
    with VideoReader(path, width=160) as reader:
        rgb = reader.get_frames(range(reader.info.num_frames))
    luma = np.concatenate(list(iter_luma_batches(path, 160, 64)))
    assert luma.shape == rgb.shape[:3] and luma.dtype == np.uint8
    ref = np.stack([cv2.cvtColor(np.ascontiguousarray(f[..., ::-1]), cv2.COLOR_BGR2YUV)[..., 0] for f in rgb])
    per_frame = np.abs(luma.mean(axis=(1, 2)) - ref.mean(axis=(1, 2)))
    assert per_frame.max() < 3.0  # full range, same frame i (a shifted frame would differ by far more at the cuts)


@pytest.mark.parametrize("name", ["bikes.mp4", "goldeneye-vfr-drop3.mp4", "issue-134-rotate.mp4"])
def test_fast_decoder_gives_the_reference_scenes(shared_data: Path, name: str) -> None:
    """The PyAV luma pass (no deblocking, luma plane, rotation ignored) finds the same scenes as decord's RGB frames."""
    fast = segment_video(shared_data / "videos" / name)
    ref = segment_video(shared_data / "videos" / name, ScenesSection(decoder="decord"))
    assert fast == ref


def test_fast_decoder_falls_back_to_decord_when_it_disagrees(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import data_builder.video as video

    real = video.iter_luma_batches

    def drops_first_frame(*args, **kwargs):  # type: ignore[no-untyped-def]
        batches = real(*args, **kwargs)
        yield next(batches)[1:]
        yield from batches

    monkeypatch.setattr(video, "iter_luma_batches", drops_first_frame)
    scenes = detect_scenes(shared_data / "videos" / "bikes.mp4")
    assert [s.start_frame for s in scenes[1:]] == [30, 76, 137, 187, 242]  # frame i is still decord's frame i


# ---------------------------------------------------------------------------------------------------
# Synthetic videos: exact cuts, post-processing
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".mp4", ".avi"])
def test_synthetic_cuts_are_found_exactly(tmp_path: Path, ext: str) -> None:
    for video in make_sample_videos(tmp_path, 2, seed=11, ext=ext):
        scenes = detect_scenes(video.path)
        _covers(scenes, video.num_frames)
        assert [s.start_frame for s in scenes[1:]] == video.cut_frames
        assert [(s.start_frame, s.end_frame) for s in scenes] == [(s.start_frame, s.end_frame) for s in video.true_scenes()]


def _scene(color: str, shape: str, seconds: float) -> SyntheticScene:
    return SyntheticScene(f"{shape} on {color}", COLORS[color], shape, seconds)


def test_short_scene_is_merged_and_long_scene_split(tmp_path: Path) -> None:
    path = tmp_path / "flash.mp4"
    # 3 s red, a 0.2 s green flash, 9 s blue (10 fps)
    assert write_scene_video(path, [_scene("red", "circle", 3), _scene("green", "star", 0.2), _scene("blue", "square", 9)]) == [30, 32]
    assert [s.start_frame for s in detect_scenes(path, ScenesSection(min_scene_len_s=0))[1:]] == [30, 32]
    merged = detect_scenes(path, ScenesSection(min_scene_len_s=0.5))
    assert len(merged) == 2 and merged[1].start_frame in (30, 32) and merged[1].boundary == "cut"
    split = detect_scenes(path, ScenesSection(min_scene_len_s=0.5, max_scene_len_s=4.0))
    _covers(split, 122)
    assert [s.boundary for s in split] == ["start", "cut", "split", "split"]
    lengths = [s.end_s - s.start_s for s in split[1:]]
    assert max(lengths) <= 4.0 and max(lengths) - min(lengths) <= 0.1 + 1e-9  # equal parts, to a frame


def test_dissolve_is_one_gradual_boundary_only_when_asked() -> None:
    rng = np.random.default_rng(0)
    a = np.full((30, 90, 160, 3), COLORS["red"], np.float64)
    b = np.full((30, 90, 160, 3), COLORS["blue"], np.float64)
    mix = np.stack([a[0] * (1 - t) + b[0] * t for t in np.linspace(0, 1, 12)[1:-1]])
    frames = np.clip(np.concatenate([a, mix, b]) + rng.integers(-6, 7, (70, 90, 160, 3)), 0, 255).astype(np.uint8)
    times = np.arange(70) / 10.0

    def boundaries(gradual: str) -> list[tuple[int, str | None]]:
        cfg = ScenesSection(gradual=gradual)
        sig = frame_signals([frames[:25], frames[25:]], cfg)
        return [(s.start_frame, s.boundary) for s in scenes_from_signals(sig, times, 7.0, cfg)[1:]]

    assert boundaries("dissolve") == [(35, "gradual")]  # the middle of the 10-frame dissolve (30..40)
    assert boundaries("fade+dissolve") == [(35, "gradual")]
    assert boundaries("none") == [(30, "cut")]  # without it, the dissolve's abrupt first frame reads as a cut


# ---------------------------------------------------------------------------------------------------
# `kframes scenes`
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> list:
    return make_sample_videos(tmp_path_factory.mktemp("videos"), 3, seed=5, min_scenes=2, max_scenes=3)


def test_cli_json_lines(videos: list, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scenes", str(videos[0].path), str(videos[1].path), "--json", "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    records = [VideoScenes.model_validate_json(line) for line in lines]
    assert [r.video.video_id for r in records] == ["sample_000", "sample_001"]
    assert [s.start_frame for s in records[0].scenes[1:]] == videos[0].cut_frames


def test_cli_folder_out_resume_and_failures(videos: list, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = videos[0].path.parent
    out = tmp_path / "scenes.jsonl"
    argv = ["scenes", str(folder), "--out", str(out), "--workers", "2", "--no-progress"]
    assert main(argv) == 0
    first = out.read_text().splitlines()
    assert len(first) == 3 and not (tmp_path / "scenes.jsonl.partial").exists()

    # A killed run left a partial file with one finished video and a torn line: both are handled on resume.
    out.write_text(first[0] + "\n")
    (tmp_path / "scenes.jsonl.partial").write_text(first[1] + "\n" + first[2][:40])
    bad = tmp_path / "broken.mp4"
    bad.write_text("not a video")
    capsys.readouterr()
    assert main(["scenes", str(folder), str(bad), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "2 of 4 videos already in" in err  # the finished one and the one in the partial file
    assert f"failed: {bad}: cannot be read as a video" in err and "1 of 4 videos failed" in err
    assert sorted(out.read_text().splitlines()) == sorted(first)  # the good ones are all there, once each
    assert not (tmp_path / "scenes.jsonl.partial").exists()


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path: Path, capfd: pytest.CaptureFixture[str], videos: list) -> None:
    bad = tmp_path / "notes.mp4"
    bad.write_text("hello")
    other = tmp_path / "other.jsonl"
    other.write_text('{"something": "else"}\n')
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    cases = [
        (["scenes", str(tmp_path / "missing.mp4")], "missing.mp4: no such file or folder"),
        (["scenes", str(bad)], "notes.mp4: cannot be read as a video"),
        (["scenes", str(empty)], "folder has no video files"),
        (["scenes", str(videos[0].path), "--set", "scenes.threshold=2"], "scenes.threshold"),
        (["scenes", str(videos[0].path), "--set", "scenes.nope=1"], "scenes.nope: unknown key"),
        (["scenes", str(videos[0].path), "--workers", "0"], "--workers must be at least 1"),
        (["scenes", str(videos[0].path), "--out", str(other)], "refusing to overwrite"),
    ]
    for argv, expected in cases:
        capfd.readouterr()
        assert main([*argv, "--no-progress"]) == 2, argv
        err = capfd.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("kframes scenes: error:") and expected in err, (argv, err)
    assert other.read_text() == '{"something": "else"}\n'


# ---------------------------------------------------------------------------------------------------
# Detectors: TransNetV2 and hybrid
# ---------------------------------------------------------------------------------------------------

TESTVIDEO_DISSOLVE = (529, 557)  # rock -> texture cross-fade (each frame a blend of 528 and 558; not in the JSON)


def test_default_boundaries_are_tagged_histogram(shared_data: Path) -> None:
    scenes = detect_scenes(shared_data / "videos" / "testvideo.mp4")
    assert scenes[0].found_by is None and scenes[0].boundary == "start"
    assert [s.found_by for s in scenes[1:]] == ["histogram"] * (len(scenes) - 1)
    record = json.loads(segment_video(shared_data / "videos" / "bikes.mp4").model_dump_json())
    assert [s["found_by"] for s in record["scenes"]] == [None] + ["histogram"] * 5


@pytest.mark.parametrize("name", ["bikes.mp4", "fades.mp4", "goldeneye-vfr-drop3.mp4", "bigbuckbunny.mp4"])
def test_hybrid_leaves_no_doubt_on_cuts_fades_and_motion(shared_data: Path, name: str) -> None:
    """Camera motion (bikes), flat-colour fades through black (fades), a one-shot video: nothing for TransNetV2,
    so the hybrid's scenes are the histogram's, found by the histogram."""
    path = shared_data / "videos" / name
    cfg = ScenesSection(detector="hybrid")
    with VideoReader(path) as reader:
        span = doubt_window(reader.info, cfg)
    sig = frame_signals(iter_luma_batches(path, cfg.downscale_width, cfg.batch_size), cfg, span=span)
    assert doubt_spans(sig, hard_cuts(sig, cfg), cfg) == []
    hybrid = segment_video(path, cfg)
    assert hybrid.scenes == segment_video(path).scenes


def test_testvideo_has_one_doubt_and_it_is_the_dissolve(shared_data: Path) -> None:
    path = shared_data / "videos" / "testvideo.mp4"
    cfg = ScenesSection(detector="hybrid")
    sig = frame_signals(iter_luma_batches(path, cfg.downscale_width, cfg.batch_size), cfg, span=15)  # 0.5 s at 29.97
    spans = doubt_spans(sig, hard_cuts(sig, cfg), cfg)
    assert len(spans) == 1
    (a, b), (first, last) = spans[0], TESTVIDEO_DISSOLVE
    assert a <= first + 2 and b >= (first + last) // 2  # the stretch covers the dissolve's start and middle
    # Without the blend test the camera-motion stretches of bikes would go to TransNetV2 too.
    bikes = shared_data / "videos" / "bikes.mp4"
    loose = ScenesSection(detector="hybrid", doubt_max_residual=5.0)
    sig = frame_signals(iter_luma_batches(bikes, 160, 64), loose, span=12)
    assert len(doubt_spans(sig, hard_cuts(sig, loose), loose)) >= 2


def _pan_and_dissolve() -> tuple[np.ndarray, np.ndarray]:
    """A camera pan over a random texture, and a 12-frame cross-fade between two still textures (luma, 90x160)."""
    import cv2

    rng = np.random.default_rng(3)
    blocks = cv2.resize(rng.uniform(20, 230, (3, 20)), (800, 90), interpolation=cv2.INTER_NEAREST)  # objects
    texture = np.clip(blocks + cv2.GaussianBlur(rng.normal(0, 25, (90, 800)), (0, 0), 2), 0, 255)
    pan = np.stack([texture[:, 8 * t : 8 * t + 160] for t in range(70)]).astype(np.uint8)
    a, b = texture[:, :160], texture[:, 600:760]
    mix = [a * (1 - w) + b * w for w in np.linspace(0, 1, 14)[1:-1]]
    dissolve = np.clip(np.stack([a] * 30 + mix + [b] * 28), 0, 255).astype(np.uint8)
    return pan, dissolve


def test_doubts_are_cross_fades_not_camera_motion() -> None:
    pan, dissolve = _pan_and_dissolve()
    cfg = ScenesSection(detector="hybrid")
    sig = frame_signals([pan], cfg, span=5)
    assert sig.span_diff is not None and sig.span_diff.max() >= cfg.doubt_threshold  # the pan does change a lot
    assert doubt_spans(sig, hard_cuts(sig, cfg), cfg) == []
    sig = frame_signals([dissolve[:40], dissolve[40:]], cfg, span=5)
    spans = doubt_spans(sig, hard_cuts(sig, cfg), cfg)
    assert len(spans) == 1 and spans[0][0] <= 31 and spans[0][1] >= 36  # the cross-fade is frames 30-41
    assert blend_residual(sig.small, *spans[0]) < 0.05


def test_batched_signals_match_opencvs_per_frame_metric(shared_data: Path) -> None:
    """The batch computation of d is cv2.compareHist's correlation, frame by frame, whatever the batching."""
    import cv2

    frames = np.concatenate(list(iter_luma_batches(shared_data / "videos" / "bikes.mp4", 160, 64)))
    hists = [luma_histogram(f, 256) for f in frames]
    ref = [0.0] + [1 - cv2.compareHist(a, b, cv2.HISTCMP_CORREL) for a, b in zip(hists, hists[1:], strict=False)]
    cfg = ScenesSection()
    for cuts in ([len(frames)], [1, 7, 100, 101]):
        sig = frame_signals(np.split(frames, cuts)[: len(cuts) + 1], cfg, span=3)
        np.testing.assert_allclose(sig.diff, ref, atol=1e-6)
        far = [1 - cv2.compareHist(hists[i - 3], hists[i], cv2.HISTCMP_CORREL) if i >= 3 else 0.0 for i in range(len(hists))]
        np.testing.assert_allclose(sig.span_diff, far, atol=1e-6)


def test_window_spans_are_whole_windows_inside_the_video() -> None:
    assert window_spans([(10, 30)], 1000) == [(0, 50)]
    assert window_spans([(512, 557)], 1000) == [(510, 560)]
    assert window_spans([(980, 1000)], 1000) == [(950, 1000)]
    assert window_spans([(100, 160), (150, 170)], 1000) == [(85, 185)]  # overlapping: joined, whole windows
    assert window_spans([(100, 120), (160, 180)], 1000) == [(85, 135), (145, 195)]  # separate windows
    assert window_spans([(0, 40), (400, 410)], 1000) == [(0, 50), (380, 430)]
    assert window_spans([(0, 1000)], 1000) == [(0, 1000)]
    assert window_spans([(0, 30)], 30) == [(0, 50)]  # a video shorter than a window: the last frame is repeated


def test_transnet_config_is_validated(capfd: pytest.CaptureFixture[str], shared_data: Path) -> None:
    from pydantic import ValidationError

    for bad in ({"detector": "learned"}, {"transnet_device": "gpu"}, {"transnet_threshold": 1.0},
                {"transnet_batch": 0}, {"doubt_window_s": 0}, {"doubt_threshold": 0}, {"doubt_max_residual": 0}):
        with pytest.raises(ValidationError):
            ScenesSection(**bad)
    assert ScenesSection(detector="hybrid", transnet_device="cuda:1").transnet_device == "cuda:1"
    video = str(shared_data / "videos" / "bikes.mp4")
    assert main(["scenes", video, "--set", "scenes.detector=learned", "--no-progress"]) == 2
    err = capfd.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "scenes.detector" in err


def test_cuda_without_a_gpu_is_a_config_error() -> None:
    import torch

    from pipeline.core.errors import ConfigError

    if torch.cuda.is_available():
        assert resolve_device("auto") == "cuda"
        return
    assert resolve_device("auto") == "cpu"
    with pytest.raises(ConfigError, match="no CUDA device"):
        resolve_device("cuda")


@pytest.mark.slow
def test_transnet_model_loads_without_touching_global_state() -> None:
    import random

    import torch

    import data_builder.transnet as tn

    tn._MODELS.pop("cpu", None)
    torch.manual_seed(1234)
    np.random.seed(5)
    random.seed(6)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(1234)
    np.random.seed(5)
    random.seed(6)
    model = load_model("cpu")
    assert not model.training and next(model.parameters()).device.type == "cpu"
    assert torch.equal(torch.rand(3), expected[0]) and np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]
    assert not torch.are_deterministic_algorithms_enabled()
    assert load_model("cpu") is model  # once per process


@pytest.mark.slow
def test_transnet_windows_are_the_packages(shared_data: Path) -> None:
    """Our batching (4 windows a call, frames from VideoReader) gives the package's own predict_frames numbers."""
    import torch

    read, close = video_reader_frames(shared_data / "videos" / "bikes.mp4")
    try:
        frames = to_model_frames(read(0, 120))
    finally:
        close()
    model = load_model("cpu")
    ours = predict(lambda a, b: frames[a:b], 120, device="cpu", batch_windows=4)
    single, many = model.predict_frames(torch.from_numpy(frames), quiet=True)
    np.testing.assert_allclose(ours.single, single.numpy(), atol=1e-4)
    np.testing.assert_allclose(ours.many, many.numpy(), atol=1e-4)
    assert [t.frame for t in transitions(ours, 0.5)] == [30, 76]  # bikes' cuts, a frame after TransNetV2's mark
    assert all(t.kind == "cut" for t in transitions(ours, 0.5))
    part = predict(lambda a, b: frames[a:b], 120, [(60, 90)], device="cpu")
    assert part.predicted_frames == 50 and np.isnan(part.single[:50]).all() and np.isnan(part.single[100:]).all()
    assert [t.frame for t in transitions(part, 0.5)] == [76]


@pytest.mark.slow
def test_hybrid_finds_testvideos_dissolve_with_transnetv2(shared_data: Path) -> None:
    """The histogram's cuts and fades, plus the dissolve the histogram misses, found by TransNetV2."""
    plain = segment_video(shared_data / "videos" / "testvideo.mp4").scenes
    scenes = segment_video(shared_data / "videos" / "testvideo.mp4", ScenesSection(detector="hybrid")).scenes
    _covers(scenes, 720)
    added = [s for s in scenes if s.found_by == "transnetv2"]
    assert len(added) == 1 and added[0].boundary == "gradual"
    assert TESTVIDEO_DISSOLVE[0] <= added[0].start_frame <= TESTVIDEO_DISSOLVE[1]
    assert [(s.start_frame, s.boundary, s.found_by) for s in scenes if s.found_by == "histogram"] == [
        (s.start_frame, s.boundary, s.found_by) for s in plain[1:]
    ]


@pytest.mark.slow
def test_transnetv2_detector_on_hard_cuts(shared_data: Path) -> None:
    truth = _truth(shared_data)["videos/goldeneye-vfr-drop3.mp4"]["cut_times_s"]
    scenes = segment_video(shared_data / "videos" / "goldeneye-vfr-drop3.mp4", ScenesSection(detector="transnetv2")).scenes
    _covers(scenes, 160)
    assert [(s.boundary, s.found_by) for s in scenes[1:]] == [("cut", "transnetv2")] * len(truth)
    assert [s.start_s for s in scenes[1:]] == [pytest.approx(t, abs=0.1) for t in truth]
