"""The demo's world and measurements: generated videos with whole-second scenes, the frame reader that stands in for
the downstream model (and gives GRPO its reward), and the hit-rate / accuracy bookkeeping of the report.

The learning check itself (a shortened `make demo` that must beat uniform sampling on held-out videos) is in
tests/test_demo_learning.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from data_builder.scene_oracle import SceneOracle, answered_correctly
from data_builder.synthetic import COLORS, make_sample_videos
from data_builder.video import FrameCache, VideoReader
from pipeline.core.config import load_recipe
from pipeline.orchestration.demo_measure import DownstreamJudge, measure, span_hits

ROOT = Path(__file__).resolve().parents[1]
# The demo's world, as configs/pipeline/demo.yaml generates it.
WORLD = dict(fps=1, size=(64, 64), min_scenes=4, max_scenes=4, min_scene_s=1, max_scene_s=3, whole_seconds=True,
             video_s=8, queries="landmark", landmark_color="red", barcode=False)


@pytest.fixture(scope="module")
def demo_videos(tmp_path_factory: pytest.TempPathFactory):
    return make_sample_videos(tmp_path_factory.mktemp("demo_world"), 8, seed=3, **WORLD)


def test_demo_world_has_whole_second_scenes_and_one_red_scene_asked_about(demo_videos) -> None:
    assert len({tuple(s.end_s for s in v.scenes) for v in demo_videos}) > 1  # the cuts move from video to video
    assert len({v.queries[0].scene_index for v in demo_videos}) > 2  # and so does the red scene
    assert len({v.queries[0].options[v.queries[0].answer] for v in demo_videos}) > 2  # and its shape
    for video in demo_videos:
        assert all(s.start_s == int(s.start_s) and s.end_s == int(s.end_s) for s in video.scenes)
        assert all(1 <= s.end_s - s.start_s <= 3 for s in video.scenes) and video.duration_s == 8
        assert len({s.color_name for s in video.scenes}) == len({s.shape for s in video.scenes}) == 4
        assert [s.color_name for s in video.scenes].count("red") == 1
        (q,) = video.queries
        scene = video.scenes[q.scene_index]
        assert scene.color_name == "red" and q.text == "What shape is shown on the red background?"
        assert q.options[q.answer] == scene.shape and (q.start_s, q.end_s) == (scene.start_s, scene.end_s)
        with VideoReader(video.path) as reader:
            assert (reader.info.width, reader.info.height) == (64, 64)
            assert reader.info.num_frames == video.num_frames == int(video.duration_s)


def test_demo_scene_detector_finds_every_generated_cut(demo_videos) -> None:
    """The data stage's scene settings (configs/demo/data.yaml) recover the generator's scenes exactly: the clip
    targets of SFT2 are only right if they do (scenes of two frames, colours told apart by luma alone)."""
    from data_builder.scenes import segment_video

    cfg = load_recipe("data", ROOT / "configs/demo/data.yaml")
    for video in demo_videos:
        found = segment_video(str(video.path), cfg.scenes).scenes
        assert [(s.start_frame, s.end_frame) for s in found] == [(s.start_frame, s.end_frame) for s in video.scenes]


def test_the_config_offers_exactly_the_generators_colours_as_landmarks() -> None:
    from typing import get_args

    from pipeline.core.config.run import SamplesSection

    assert set(get_args(SamplesSection.model_fields["landmark_color"].annotation)) == set(COLORS)


def test_palette_is_far_apart_in_luma() -> None:
    luma = sorted(0.299 * r + 0.587 * g + 0.114 * b for r, g, b in COLORS.values())
    assert min(b - a for a, b in zip(luma, luma[1:])) >= 15


@pytest.mark.parametrize("world", ["demo", "default"])
def test_oracle_reads_background_and_shape(tmp_path: Path, world: str) -> None:
    kwargs = WORLD if world == "demo" else {"min_scenes": 3, "max_scenes": 4}  # default: 160x120, 10 fps, barcode
    videos = make_sample_videos(tmp_path, 2, seed=5, **kwargs)
    oracle, cache = SceneOracle(), FrameCache(max_videos=1)
    reads = right = 0
    for video in videos:
        for scene in video.scenes:
            frames = list(range(scene.start_frame, scene.end_frame, max(1, (scene.end_frame - scene.start_frame) // 3)))
            for image in cache.images(video.path, frames, max_pixels=3136):
                reads += 1
                right += oracle.read(image) == (scene.color_name, scene.shape)
    assert right / reads >= 0.9


def test_oracle_answers_only_from_evidence_frames(demo_videos) -> None:
    video = demo_videos[0]
    oracle, cache = SceneOracle(strength=4.0), FrameCache(max_videos=1)
    for q in video.queries:
        scene = video.scenes[q.scene_index]
        inside = cache.images(video.path, list(range(scene.start_frame, scene.end_frame)))
        outside = cache.images(video.path, [i for i in range(video.num_frames) if not scene.start_frame <= i < scene.end_frame])
        lp_in = oracle.option_logprobs([_Req(inside, q.text, q.options)])[0]
        assert answered_correctly(lp_in, q.answer)
        assert math.isclose(math.exp(lp_in[q.answer]), math.exp(4) / (math.exp(4) + 3), rel_tol=1e-6)
        lp_out = oracle.option_logprobs([_Req(outside, q.text, q.options)])[0]
        assert max(lp_out) == min(lp_out) and not answered_correctly(lp_out, q.answer)  # no evidence: a tie


class _Req:
    def __init__(self, images, question, options) -> None:
        self.images, self.question, self.options = images, question, options


def test_oracle_reward_prefers_clips_on_the_answer_scene(demo_videos) -> None:
    """`oracle_logprob` is the users' downstream log-prob reward (parser, sampler, tanh of the log-odds) with the
    reader as its backend; the demo's GRPO recipe names it."""
    import pipeline.orchestration.demo  # noqa: F401  (registers the reward)
    from pipeline.core.config import RewardSection
    from rewards.registry import build_rewards

    # a video whose red scene and another scene last at least 2 s: k = 2 frames fit in either clip
    def long(sc) -> bool:
        return sc.end_s - sc.start_s >= 2

    video = next(v for v in demo_videos if long(v.scenes[v.queries[0].scene_index]) and sum(map(long, v.scenes)) >= 2)
    q = video.queries[0]
    scene = video.scenes[q.scene_index]
    other = next(sc for n, sc in enumerate(video.scenes) if n != q.scene_index and long(sc))
    funcs, weights, _ = build_rewards(RewardSection(weights={"oracle_logprob": 1.0}, k=2, tau=1.0))
    clip = '[{{"start": {:.1f}, "end": {:.1f}, "priority": "P1", "reason": "x"}}]'
    completions = [clip.format(scene.start_s, scene.end_s), clip.format(other.start_s, other.end_s), "no clips"]
    n = len(completions)
    rewards = funcs[0]([None] * n, completions, video=[str(video.path)] * n, question=[q.text] * n,
                       options=[q.options] * n, answer=[q.answer] * n)
    assert rewards[0] == pytest.approx(math.tanh(4.0)) and rewards[1] == pytest.approx(0.0)
    assert rewards[1] <= rewards[2] < rewards[0]  # unparseable: uniform frames, which may catch the scene


def test_measure_counts_hits_fallbacks_and_answers(demo_videos) -> None:
    records = []
    for video, q in [(v, q) for v in demo_videos[:4] for q in v.queries]:
        scene = video.scenes[q.scene_index]
        idx = list(range(scene.start_frame, scene.end_frame))[:2]
        records.append({"question_id": q.query_id, "question": q.text, "options": q.options, "answer": q.answer,
                        "video": str(video.path), "answer_span_s": [q.start_s, q.end_s], "indices": idx,
                        "timestamps_s": [float(i) for i in idx], "fallback": False, "clips": []})
    records[0]["fallback"] = True
    res = measure(records, DownstreamJudge(max_pixels=4096))
    assert res["questions"] == 4 and res["selector_frame_hit_rate"] == 1.0 and res["selector_scene_recall"] == 1.0
    assert res["fallback_rate"] == pytest.approx(1 / 4) and res["selector_accuracy"] == 1.0
    assert res["uniform_frame_hit_rate"] < 1.0
    assert 0.0 <= res["uniform_accuracy"] <= 1.0


def test_span_hits() -> None:
    assert span_hits([0.5, 1.0, 2.0, 3.0], [1.0, 3.0]) == (0.5, True)  # [start, end): 1.0 in, 3.0 out
    assert span_hits([0.0, 5.0], [1.0, 3.0]) == (0.0, False)
