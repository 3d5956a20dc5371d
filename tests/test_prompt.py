"""The selector's prompt and output grammar (SPEC section 4): the one renderer and the one parser."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.contracts import KeyClip
from pipeline.core.prompt import format_clips, parse_clips, render_selector_messages

DURATION = 120.0


@st.composite
def disjoint_clips(draw: st.DrawFn, duration: float = DURATION) -> list[KeyClip]:
    """Non-overlapping clips on the 0.1 s grid the selector writes, in random order."""
    n = draw(st.integers(1, 6))
    cuts = sorted(
        draw(st.lists(st.integers(0, int(duration * 10)), min_size=2 * n, max_size=2 * n, unique=True))
    )
    reasons = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)
    clips = [
        KeyClip(
            start_s=cuts[2 * i] / 10,
            end_s=cuts[2 * i + 1] / 10,
            priority=draw(st.sampled_from(["P1", "P2"])),
            reason=draw(reasons),
        )
        for i in range(n)
    ]
    return draw(st.permutations(clips))


def _key(c: KeyClip) -> tuple[float, float, str, str]:
    return (round(c.start_s, 6), round(c.end_s, 6), c.priority, c.reason)


@settings(max_examples=200, deadline=None)
@given(disjoint_clips())
def test_format_then_parse_round_trips(clips: list[KeyClip]) -> None:
    parsed = parse_clips(format_clips(clips), DURATION)
    assert parsed.ok, parsed.error
    # touching clips stay separate; the output is in time order
    assert [_key(c) for c in parsed.clips] == sorted(_key(c) for c in clips)


@settings(max_examples=300, deadline=None)
@given(
    st.floats(0.05, 300),
    st.lists(
        st.tuples(st.floats(0, 1 - 1e-6), st.floats(1e-4, 30), st.sampled_from(["P1", "P2"])),
        min_size=1,
        max_size=6,
    ),
)
def test_format_then_parse_round_trips_off_grid_times_within_rounding(duration: float, raw) -> None:
    clips = [
        KeyClip(start_s=f * duration, end_s=min(f * duration + d, duration), priority=p) for f, d, p in raw
    ]
    clips = [c for c in clips if c.end_s > c.start_s] or [KeyClip(start_s=0, end_s=duration, priority="P1")]
    parsed = parse_clips(format_clips(clips, duration_s=duration), duration)
    assert parsed.ok, parsed.error  # never start == end or past the video after rounding
    for (
        c
    ) in clips:  # every input span is covered (within rounding) by an output clip of at least its priority
        assert any(
            p.start_s <= c.start_s + 0.1 + 1e-9
            and c.end_s - 0.1 - 1e-9 <= p.end_s
            and p.priority <= c.priority
            for p in parsed.clips
        )


WRAPPERS = [
    "{}",
    "Here are the clips:\n{}\nThese cover the question.",
    "```json\n{}\n```",
    "Sure! ```\n{}\n``` Done.",
    "The frames [3, 4 are dark, so I pick: {}",  # an unbalanced bracket in the prose
    "Frames [3, 4] are dark. {}",  # a list of numbers before the clip list
    'The answer is "[x" maybe. {} ok',
]


@settings(max_examples=60, deadline=None)
@given(disjoint_clips(), st.sampled_from(WRAPPERS))
def test_prose_and_code_fences_around_the_list_are_accepted(clips: list[KeyClip], wrapper: str) -> None:
    parsed = parse_clips(wrapper.format(format_clips(clips)), DURATION)
    assert parsed.ok, parsed.error
    assert [_key(c) for c in parsed.clips] == sorted(_key(c) for c in clips)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("I cannot tell.", "no JSON list of clips found"),
        ("[]", "the clip list is empty"),
        ('[{"start": 5, "end": 5, "priority": "P1"}]', "start 5.0 is not before end 5.0"),
        ('[{"start": 9, "end": 4, "priority": "P1"}]', "start 9.0 is not before end 4.0"),
        ('[{"start": 150, "end": 160, "priority": "P1"}]', "start 150.0s is outside the video"),
        ('[{"start": -2, "end": 4, "priority": "P1"}]', "start -2.0s is outside the video"),
        ('[{"start": 100, "end": 130, "priority": "P1"}]', "end 130.0s is past the end of the video"),
        ('[{"start": 1, "end": 4, "priority": "P3"}]', "unknown priority 'P3'"),
        ('[{"start": 1, "end": 4}]', "priority is missing"),
        ('[{"start": "soon", "end": 4, "priority": "P1"}]', "start is not a number"),
        ('[{"end": 4, "priority": "P1"}]', "start is missing"),
        ('[{"start": NaN, "end": 4, "priority": "P1"}]', "start is not a finite number"),
        ("[[1, 2]]", "clip 0: is not an object"),
        ('[{"start": 1, "end": 4, "priority": "P1"', "no JSON list of clips found"),  # cut off mid-list
    ],
)
def test_each_rejection_says_why(text: str, reason: str) -> None:
    parsed = parse_clips(text, DURATION)
    assert not parsed.ok and not parsed.clips
    assert reason in parsed.error


def test_lenient_parsing_keeps_the_valid_clips_and_lists_the_dropped() -> None:
    text = '[{"start": 1, "end": 4, "priority": "P1"}, {"start": 1, "end": 4, "priority": "P9"}]'
    assert not parse_clips(text, DURATION).ok
    parsed = parse_clips(text, DURATION, strict=False)
    assert parsed.ok and [c.start_s for c in parsed.clips] == [1.0]
    assert parsed.dropped == ["clip 1: unknown priority 'P9' (expected P1 or P2)"]


def test_tolerated_forms() -> None:
    # "12.5s" strings, lower-case priorities, an end a hair past the video (rounded timestamps) is clamped
    parsed = parse_clips('[{"start": "12.5s", "end": 120.04, "priority": "p2"}]', DURATION)
    assert parsed.ok
    assert (parsed.clips[0].start_s, parsed.clips[0].end_s, parsed.clips[0].priority) == (
        12.5,
        DURATION,
        "P2",
    )


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 100), st.integers(1, 20), st.sampled_from(["P1", "P2"])),
        min_size=1,
        max_size=8,
    )
)
def test_overlapping_clips_merge_keeping_the_higher_priority(raw) -> None:
    items = [{"start": s, "end": s + d, "priority": p, "reason": f"r{i}"} for i, (s, d, p) in enumerate(raw)]
    parsed = parse_clips(json.dumps(items), DURATION)
    assert parsed.ok
    out = parsed.clips
    for a, b in zip(out, out[1:]):
        assert a.end_s <= b.start_s  # disjoint and in time order
    for it in items:  # every input lies in one merged clip whose priority is at least as high
        host = [c for c in out if c.start_s <= it["start"] and it["end"] <= c.end_s]
        assert len(host) == 1 and host[0].priority <= it["priority"]
        assert it["reason"] in host[0].reason
    for c in out:  # and a merged clip is P1 exactly when one of its parts was
        parts = [it for it in items if c.start_s <= it["start"] and it["end"] <= c.end_s]
        assert (c.priority == "P1") == any(it["priority"] == "P1" for it in parts)


def test_merging_example() -> None:
    text = json.dumps(
        [
            {"start": 0, "end": 10, "priority": "P2", "reason": "kitchen"},
            {"start": 8, "end": 15, "priority": "P1", "reason": "cutting"},
            {"start": 15, "end": 20, "priority": "P2", "reason": "touching is not overlapping"},
        ]
    )
    clips = parse_clips(text, DURATION).clips
    assert [(c.start_s, c.end_s, c.priority, c.reason) for c in clips] == [
        (0.0, 15.0, "P1", "kitchen; cutting"),
        (15.0, 20.0, "P2", "touching is not overlapping"),
    ]


def test_renderer_puts_each_frame_after_its_timestamp_then_the_query() -> None:
    msgs = render_selector_messages(
        [0.0, 2.54, 7.0], "where is the dog?", duration_s=9.0, options=["park", "home"]
    )
    assert len(msgs) == 1 and msgs[0]["role"] == "user"
    parts = msgs[0]["content"]
    frames = [i for i, p in enumerate(parts) if p["type"] == "image"]
    assert len(frames) == 3
    assert [parts[i - 1]["text"] for i in frames] == ["<t=0.0s>", "<t=2.5s>", "<t=7.0s>"]
    assert frames[0] > 0 and "Video length: 9.0s" in "".join(p.get("text", "") for p in parts[: frames[0]])
    assert parts[-1]["text"] == "\nQuery: where is the dog?\nOptions: (A) park (B) home"
    with pytest.raises(ValueError, match="unknown selector task"):
        render_selector_messages([0.0], "q", task="nope")
