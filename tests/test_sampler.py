"""The any-k sampler: property tests over random clips, videos and k, and hand-worked
allocations that pin down every rule of SPEC section 5."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.core.contracts import KeyClip
from pipeline.core.errors import KframesError
from pipeline.core.sampler import MODES, SamplerError, SamplerParams, hfs_greedy, sample_frames, uniform_frames


def clip(start: float, end: float, priority: str = "P1") -> KeyClip:
    return KeyClip(start_s=start, end_s=end, priority=priority)


# ----------------------------------------------------------------------------------------------------
# Properties
# ----------------------------------------------------------------------------------------------------


@st.composite
def videos_and_clips(draw: st.DrawFn) -> tuple[int, float, list[float] | None, list[KeyClip], int]:
    num_frames = draw(st.integers(1, 3000))
    fps = draw(st.sampled_from([1.0, 2.0, 10.0, 23.976, 30.0]))
    vfr = draw(st.booleans())
    ts = None
    if vfr:
        gaps = draw(st.lists(st.floats(0.2, 3.0), min_size=num_frames, max_size=num_frames))
        ts = list(np.cumsum(np.array(gaps) / fps) - gaps[0] / fps)
        duration = ts[-1] + gaps[-1] / fps
    else:
        duration = num_frames / fps
    clips = []
    for _ in range(draw(st.integers(0, 6))):
        start = draw(st.floats(0, duration * 1.1, allow_nan=False))
        length = draw(st.floats(1e-3, max(duration / 2, 2e-3), allow_nan=False))
        clips.append(clip(start, start + length, draw(st.sampled_from(["P1", "P2"]))))
    k = draw(st.integers(1, 96))
    return num_frames, fps, ts, clips, k


PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(videos_and_clips(), st.sampled_from(MODES))
def test_count_exact_unique_sorted_in_range_and_deterministic(case, mode: str) -> None:
    n, fps, ts, clips, k = case
    res = sample_frames(clips, n, fps, k, mode, timestamps_s=ts)
    assert len(res.indices) == min(k, n)
    assert res.indices == sorted(set(res.indices))
    assert all(0 <= i < n for i in res.indices)
    assert res.fallback == (not res.allocations)
    again = sample_frames(list(clips), n, fps, k, mode, timestamps_s=ts)
    assert again == res
    if mode == "soft":
        assert res.token_budget is not None and len(res.token_budget) == len(res.indices)
        assert np.mean(res.token_budget) == pytest.approx(0.2)
    else:
        assert res.token_budget is None


@PROPS
@given(videos_and_clips(), st.sampled_from(["focused", "hybrid", "auto", "soft"]))
def test_every_p1_clip_gets_a_frame_when_k_allows(case, mode: str) -> None:
    n, fps, ts, clips, k = case
    res = sample_frames(clips, n, fps, k, mode, timestamps_s=ts)
    p1 = [a for a in res.allocations if a["priority"] == "P1"]
    if min(k, n) >= len(p1):
        assert all(a["frames"] >= 1 for a in p1), res.allocations


@PROPS
@given(videos_and_clips())
def test_focused_frames_lie_inside_clips(case) -> None:
    n, fps, ts, clips, k = case
    res = sample_frames(clips, n, fps, k, "focused", timestamps_s=ts)
    capacity = sum(a["end_frame"] - a["first_frame"] for a in res.allocations)
    if res.allocations and capacity >= min(k, n):
        assert res.background == 0
        for i in res.indices:
            assert any(a["first_frame"] <= i < a["end_frame"] for a in res.allocations)
        assert sum(a["frames"] for a in res.allocations) == min(k, n)


@PROPS
@given(videos_and_clips(), st.sampled_from([0.0, 0.25, 0.5]))
def test_hybrid_background_share_holds_within_one_frame(case, share: float) -> None:
    n, fps, ts, clips, k = case
    res = sample_frames(clips, n, fps, k, "hybrid", timestamps_s=ts, background_share=share)
    if res.fallback:
        return
    k_eff = min(k, n)
    want = share * k_eff
    inside = sum(a["end_frame"] - a["first_frame"] for a in res.allocations)
    n_p1 = sum(a["priority"] == "P1" for a in res.allocations)
    # the share is honoured when the video has room for it on both sides and the P1 guarantee leaves it be
    if (
        n - inside >= math.ceil(want) + 1
        and inside >= k_eff - math.floor(want) + 1
        and k_eff - round(want) >= n_p1
    ):
        assert abs(res.background - want) <= 1


@PROPS
@given(videos_and_clips())
def test_auto_is_focused_up_to_16_and_hybrid_above(case) -> None:
    n, fps, ts, clips, k = case
    res = sample_frames(clips, n, fps, k, "auto", timestamps_s=ts)
    expected = sample_frames(clips, n, fps, k, "focused" if k <= 16 else "hybrid", timestamps_s=ts)
    assert res.indices == expected.indices and res.mode == expected.mode


# ----------------------------------------------------------------------------------------------------
# Hand-worked allocations (1000 frames at 10 fps = 100 s unless said otherwise)
# ----------------------------------------------------------------------------------------------------

TWO = [clip(10, 20, "P1"), clip(40, 70, "P2")]


def test_focused_weight_times_length_largest_remainder_midpoints() -> None:
    # weights 2*10 = 20 and 1*30 = 30 -> quotas 3.2 and 4.8 -> floors 3, 4; the leftover frame goes to the
    # larger remainder (0.8, P2). Frames at the midpoints of equal sub-spans: 10 + (j + 0.5) * 10/3 s.
    res = sample_frames(TWO, 1000, 10.0, 8, "focused")
    assert [a["quota"] for a in res.allocations] == [3.2, 4.8]
    assert [a["allocated"] for a in res.allocations] == [3, 5]
    assert res.indices == [116, 150, 183, 430, 490, 550, 610, 670]
    assert not res.fallback and res.mode == "focused" and res.background == 0


def test_hybrid_puts_the_share_uniformly_over_the_time_outside_clips() -> None:
    # k=8: round(0.25 * 8) = 2 background frames, 6 in clips (quotas 2.4 / 3.6 -> 2 / 4). Outside time is
    # 0-10, 20-40, 70-100 s (60 s); its midpoints at 15 s and 45 s of that are 25 s and 85 s of the video.
    res = sample_frames(TWO, 1000, 10.0, 8, "hybrid")
    assert [a["allocated"] for a in res.allocations] == [2, 4]
    assert res.indices == [125, 175, 250, 437, 512, 587, 662, 850]
    assert res.background == 2


def test_auto_switches_at_16() -> None:
    assert sample_frames(TWO, 1000, 10.0, 16, "auto").mode == "focused"
    assert sample_frames(TWO, 1000, 10.0, 17, "auto").mode == "hybrid"


def test_p1_guarantee_takes_a_frame_from_the_clip_furthest_above_its_share() -> None:
    # quotas 2*1/(2+90)*2 = 0.04 (P1) and 1.96 (P2) round to 0 and 2; the P1 clip takes one back.
    res = sample_frames([clip(0, 1, "P1"), clip(10, 100, "P2")], 1000, 10.0, 2, "focused")
    assert [a["allocated"] for a in res.allocations] == [1, 1]
    assert res.indices == [5, 550]
    # with fewer frames than P1 clips there is no guarantee, only the largest quotas
    res = sample_frames([clip(0, 1), clip(10, 11), clip(20, 50)], 1000, 10.0, 2, "focused")
    assert [a["allocated"] for a in res.allocations] == [0, 0, 2]


def test_remainder_ties_go_to_the_higher_priority_then_the_earlier_clip() -> None:
    res = sample_frames([clip(0, 10, "P2"), clip(20, 30, "P2")], 1000, 10.0, 3, "focused")
    assert [a["allocated"] for a in res.allocations] == [2, 1]
    res = sample_frames([clip(0, 20, "P2"), clip(30, 40, "P1")], 1000, 10.0, 3, "focused")
    assert [a["allocated"] for a in res.allocations] == [1, 2]


def test_a_clip_shorter_than_its_share_spills_over_to_the_background() -> None:
    # 100 frames; the clip 1.0-1.3 s owns frames 10, 11, 12. The other 5 go uniformly over the 9.7 s outside.
    res = sample_frames([clip(1.0, 1.3)], 100, 10.0, 8, "focused")
    assert res.indices == [9, 10, 11, 12, 32, 51, 70, 90]
    assert res.allocations[0]["frames"] == 3 and res.background == 5


def test_capacity_overflow_goes_to_the_other_clips_first() -> None:
    # the short P1 clip (3 frames) would get 4 of 5 by weight; its excess goes to the P2 clip, not outside
    res = sample_frames([clip(1.0, 1.3, "P1"), clip(5.0, 5.4, "P2")], 100, 10.0, 5, "focused")
    assert [a["frames"] for a in res.allocations] == [3, 2] and res.background == 0


def test_sub_frame_clips_take_the_frame_on_screen_and_collisions_are_refilled() -> None:
    # two clips inside the same 0.1 s frame become one clip on frame 10, the rest is refilled outside
    res = sample_frames([clip(1.01, 1.02, "P2"), clip(1.03, 1.04, "P1")], 100, 10.0, 3, "focused")
    assert len(res.allocations) == 1 and res.allocations[0]["priority"] == "P1"
    assert 10 in res.indices and len(res.indices) == 3


def test_overlapping_clips_merge_keeping_the_higher_priority() -> None:
    res = sample_frames([clip(0, 10, "P2"), clip(5, 15, "P1")], 1000, 10.0, 4, "focused")
    assert len(res.allocations) == 1
    assert (res.allocations[0]["start_s"], res.allocations[0]["end_s"], res.allocations[0]["priority"]) == (
        0,
        15,
        "P1",
    )


def test_no_valid_clip_falls_back_to_uniform_and_says_why() -> None:
    res = sample_frames([], 1000, 10.0, 8, "hybrid")
    assert res.fallback and res.fallback_reason == "no clips"
    assert res.indices == [62, 187, 312, 437, 562, 687, 812, 937]  # floor((j + 0.5) * 1000 / 8)
    res = sample_frames([clip(200, 210)], 1000, 10.0, 8, "focused")
    assert res.fallback and "inside the video" in res.fallback_reason and res.dropped
    res = sample_frames([clip(95, 120)], 1000, 10.0, 4, "focused")  # clamped to the video, not dropped
    assert not res.fallback and res.allocations[0]["end_s"] == 100.0


def test_k_larger_than_the_video_returns_every_frame() -> None:
    for mode in MODES:
        assert sample_frames(TWO, 5, 0.05, 8, mode).indices == [0, 1, 2, 3, 4]


def test_variable_frame_rate_uses_presentation_times() -> None:
    # 5 frames at 0, 0.1, ..., 0.4 s then 5 frames at 1, 2, ..., 5 s: the clip 1.5-4.5 s owns frames 6-8
    ts = [0.0, 0.1, 0.2, 0.3, 0.4, 1.0, 2.0, 3.0, 4.0, 5.0]
    res = sample_frames([clip(1.5, 4.5)], 10, 10.0, 3, "focused", timestamps_s=ts)
    assert res.indices == [6, 7, 8]
    assert uniform_frames(10, 2, 10.0, ts) == [5, 8]  # on screen at 1.5 s and 4.5 s of the 6 s video


def test_uniform_frames_are_segment_midpoints() -> None:
    assert uniform_frames(100, 4, 10.0) == [12, 37, 62, 87]
    assert uniform_frames(3, 8, 10.0) == [0, 1, 2]


# ----------------------------------------------------------------------------------------------------
# set (HFS) and soft (KVTP)
# ----------------------------------------------------------------------------------------------------


def _hfs_objective(
    scores: np.ndarray, chosen: list[int], l_rel=0.5, l_cov=0.3, l_red=0.2, tau_c=2.0, gamma=10.0
):
    """HFS eq. 11-15, written out directly with a binary mask m."""
    m = np.zeros(scores.size)
    m[chosen] = 1
    rel = float((scores * m).sum())
    cov = tau_c * math.log(float(np.exp(scores * m / tau_c).sum()))
    t = np.arange(scores.size, dtype=float)
    kern = np.exp(-((t[:, None] - t[None, :]) ** 2) / (2 * gamma**2))
    np.fill_diagonal(kern, 0)
    red = float(m @ kern @ m)
    return l_rel * rel + l_cov * cov - l_red * red


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=3, max_size=40), st.data())
def test_hfs_greedy_takes_the_best_marginal_gain_of_the_paper_objective(scores: list[float], data) -> None:
    s = np.array(scores)
    k = data.draw(st.integers(1, len(scores)))
    gamma = data.draw(st.sampled_from([1.0, 3.0, 10.0]))
    order = hfs_greedy(s, k, l_rel=0.5, l_cov=0.3, l_red=0.2, tau_c=2.0, gamma=gamma).tolist()
    assert len(set(order)) == k
    for step, j in enumerate(order):
        chosen = order[:step]
        gains = [
            _hfs_objective(s, chosen + [c], gamma=gamma) - _hfs_objective(s, chosen, gamma=gamma)
            for c in range(s.size)
            if c not in chosen
        ]
        assert _hfs_objective(s, chosen + [j], gamma=gamma) - _hfs_objective(
            s, chosen, gamma=gamma
        ) == pytest.approx(max(gains), abs=1e-9)


def test_set_mode_prefers_clip_frames_but_spreads_them() -> None:
    # one P1 clip covering 10% of a 256-frame video (grid = every frame, gamma = 10 frames)
    res = sample_frames([clip(100, 125.6)], 256, 1.0, 3, "set")
    assert res.mode == "set" and not res.fallback
    assert res.indices == [100, 112, 125]  # the redundancy term spreads them over the clip
    # without redundancy the objective is relevance + coverage only: all frames in the clip
    dense = sample_frames([clip(100, 125.6)], 256, 1.0, 8, "set", params=SamplerParams(l_red=0.0))
    assert all(100 <= i < 126 for i in dense.indices)
    # with it, once the clip is covered, further frames are worth more elsewhere in the video
    spread = sample_frames([clip(100, 125.6)], 256, 1.0, 8, "set")
    assert spread.allocations[0]["frames"] == 3 and spread.background == 5


def test_set_mode_blends_similarity_scores() -> None:
    sims = np.zeros(256)
    sims[200:210] = 1.0  # the similarity model sees the evidence elsewhere
    base = sample_frames([clip(100, 125.6, "P2")], 256, 1.0, 2, "set")
    blended = sample_frames([clip(100, 125.6, "P2")], 256, 1.0, 2, "set", frame_scores=sims, params=SamplerParams(sim_weight=0.9))
    assert not any(200 <= i < 210 for i in base.indices)
    assert any(200 <= i < 210 for i in blended.indices)
    as_map = sample_frames(
        [clip(100, 125.6, "P2")],
        256,
        1.0,
        2,
        "set",
        frame_scores={i: float(v) for i, v in enumerate(sims)},
        params=SamplerParams(sim_weight=0.9),
    )
    assert as_map.indices == blended.indices


def test_soft_budget_is_kvtp_softmax_over_the_chosen_frames() -> None:
    res = sample_frames(TWO, 1000, 10.0, 8, "soft", params=SamplerParams(alpha=0.3, temperature=0.5))
    assert res.indices == sample_frames(TWO, 1000, 10.0, 8, "hybrid").indices
    # scores: P1 frames 1.0, P2 frames 0.5, background 0.05 -> r_i = 0.3 * 8 * softmax(s / 0.5)
    s = np.array([1.0, 1.0, 0.05, 0.5, 0.5, 0.5, 0.5, 0.05])
    expected = 0.3 * 8 * np.exp(s / 0.5) / np.exp(s / 0.5).sum()
    assert res.token_budget == pytest.approx(expected.tolist())
    assert sum(res.token_budget) == pytest.approx(0.3 * 8)


def test_bad_arguments_raise_a_user_error_naming_the_problem() -> None:
    with pytest.raises(SamplerError, match="k must be a positive integer"):
        sample_frames(TWO, 1000, 10.0, 0)
    with pytest.raises(KframesError, match="unknown sampler mode 'dense'"):
        sample_frames(TWO, 1000, 10.0, 8, "dense")
    with pytest.raises(SamplerError, match="timestamps_s has 3 entries but the video has 1000 frames"):
        sample_frames(TWO, 1000, 10.0, 8, timestamps_s=[0.0, 0.1, 0.2])
    with pytest.raises(SamplerError, match="weights"):
        sample_frames(TWO, 1000, 10.0, 8, weights={"P3": 1.0})
    with pytest.raises(SamplerError, match="weights"):
        sample_frames(TWO, 1000, 10.0, 8, weights={"P1": 0.0})
    with pytest.raises(SamplerError, match="frame_scores has 2 entries"):
        sample_frames(TWO, 1000, 10.0, 8, "set", frame_scores=[0.1, 0.2])


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 100_000), st.integers(1, 300), st.sampled_from([1.0, 23.976, 25.0, 30.0, 59.94]))
def test_uniform_fallback_equals_the_uniform_baseline_at_constant_frame_rate(
    n: int, k: int, fps: float
) -> None:
    from data_builder.video import uniform_indices

    assert uniform_frames(n, k, fps) == uniform_indices(n, k)
    assert sample_frames([], n, fps, k).indices == uniform_indices(n, k)
