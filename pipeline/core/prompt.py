"""The selector's prompt and output grammar (SPEC section 4): one renderer, one parser.

SFT1, SFT2, GRPO, the reward and inference all build the selector's input with `render_selector_messages`
and read its output with `parse_clips`, so a change to the format is made in exactly one place and the
model is never trained on one rendering and queried with another.

Input: the T candidate frames as images, each introduced by its timestamp (`<t=12.4s>`), then the
request. Frames are `{"type": "image"}` placeholders: the pixels travel separately (TRL's `images`
column, the processor's `images=` argument), decoded when a batch is built.

Output: a JSON list of clips in time order,
`[{"start": 12.0, "end": 18.5, "priority": "P1", "reason": "..."}, ...]`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.core.contracts import PRIORITY_RANK, KeyClip

SELECTOR_INSTRUCTION = (
    "You see frames of a video, each after its timestamp. Find the clips that matter for the query. "
    'Answer with a JSON list in time order: [{"start": seconds, "end": seconds, "priority": "P1" or "P2", '
    '"reason": "..."}]. P1 is key evidence, P2 is secondary context.'
)

# Task-specific instructions. Every task shares the same frame rendering; only this text differs.
TASK_INSTRUCTIONS: dict[str, str] = {
    "key_clips": SELECTOR_INSTRUCTION,
    "caption_to_scene": (
        "You see frames of a video, each after its timestamp. Find the scene that the description matches. "
        'Answer with JSON: {"start": seconds, "end": seconds}.'
    ),
    "scene_to_caption": (
        "You see frames of a video, each after its timestamp. Describe what happens in the given time span "
        "in one sentence."
    ),
    "relevance": (
        "You see frames of a video, each after its timestamp. Rate how relevant the given time span is to the "
        'query, from 1 (unrelated) to 5 (key evidence). Answer with JSON: {"score": n, "reason": "..."}.'
    ),
}

# Overlap tolerance when checking a span against the video's duration: the model predicts times from
# rounded frame timestamps, so an end a hair past the duration is clamped rather than rejected.
DURATION_TOLERANCE_S = 0.05


def format_timestamp(t: float) -> str:
    return f"<t={t:.1f}s>"


def render_selector_messages(
    timestamps_s: Sequence[float],
    request: str,
    *,
    task: str = "key_clips",
    duration_s: float | None = None,
    options: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Render the selector's user turn: instruction, then each frame after its timestamp, then the request.

    `request` is the query for key-clip prediction, or the task-specific ask (a caption, a span) for SFT1.
    Options of a multiple-choice question are listed after the query: the selector sees what the
    downstream model will be asked, as in the paper's RL stage.
    """
    if task not in TASK_INSTRUCTIONS:
        raise ValueError(f"unknown selector task {task!r}; expected one of {sorted(TASK_INSTRUCTIONS)}")
    content: list[dict[str, Any]] = [{"type": "text", "text": TASK_INSTRUCTIONS[task]}]
    if duration_s is not None:
        content.append({"type": "text", "text": f" Video length: {duration_s:.1f}s."})
    for t in timestamps_s:
        content.append({"type": "text", "text": format_timestamp(float(t))})
        content.append({"type": "image"})
    text = f"\nQuery: {request}"
    if options:
        text += "\nOptions: " + " ".join(f"({chr(65 + i)}) {o}" for i, o in enumerate(options))
    content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


def format_clips(clips: Sequence[KeyClip], *, with_reason: bool = True, duration_s: float | None = None) -> str:
    """The target text the selector is trained to produce (inverse of `parse_clips`).

    Times are rounded to 0.1 s (the precision of the frame labels the selector sees). Rounding is monotone,
    so clips that did not overlap still do not; a clip shorter than the rounding step keeps a 0.1 s span
    instead of collapsing to start == end, which `parse_clips` would reject. Give `duration_s` so that a
    clip in the video's last 0.05 s does not round its start onto the end of the video.
    """
    out = []
    last_start = None if duration_s is None else max(0.0, math.floor((duration_s - 1e-9) * 10) / 10)
    for c in sorted(clips, key=lambda c: (c.start_s, c.end_s)):
        start, end = round(c.start_s, 1), round(c.end_s, 1)
        if last_start is not None and start > last_start:
            start = last_start
        if end <= start:
            end = round(start + 0.1, 1)
        if duration_s is not None and end > duration_s + DURATION_TOLERANCE_S:
            end = duration_s
        item: dict[str, Any] = {"start": start, "end": end, "priority": c.priority}
        if with_reason:
            item["reason"] = c.reason
        out.append(item)
    return json.dumps(out, ensure_ascii=False)


@dataclass
class ParsedClips:
    """What `parse_clips` found: the clips (merged, in time order), or why there are none."""

    clips: list[KeyClip] = field(default_factory=list)
    error: str | None = None
    dropped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None


_FENCE = re.compile(r"```[A-Za-z]*\s*(.*?)```", re.DOTALL)
_DECODER = json.JSONDecoder()


def _json_lists(text: str) -> list[list[Any]]:
    """Every JSON list in `text`: inside code fences first, then wherever a `[` starts one in the prose.

    Each `[` is tried as the start of a JSON value (`raw_decode` ignores what follows), so a stray or
    unbalanced bracket in the prose ("frames [3, 4 are dark") cannot swallow the real list after it.
    """
    found: list[list[Any]] = []
    for chunk in [m.group(1) for m in _FENCE.finditer(text)] + [text]:
        pos = chunk.find("[")
        while pos != -1:
            try:
                value, end = _DECODER.raw_decode(chunk, pos)
            except json.JSONDecodeError:
                pos = chunk.find("[", pos + 1)
                continue
            if isinstance(value, list):
                found.append(value)
            pos = chunk.find("[", end)
    return found


def _pick_clip_list(lists: list[list[Any]]) -> list[Any] | None:
    """The list that holds the clips: the first list of objects; else the first list at all (so that an
    empty or malformed list is reported as such rather than as "no list")."""
    for value in lists:
        if value and all(isinstance(v, dict) for v in value):
            return value
    return lists[0] if lists else None


def _as_seconds(value: Any, name: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{name} is not a number")
    if value is None:
        raise ValueError(f"{name} is missing")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError(f"{name} is not a finite number: {value!r}")
        return float(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*s?\s*", value)
        if m:
            return float(m.group(1))
    raise ValueError(f"{name} is not a number: {value!r}")


def _merge_overlapping(clips: list[KeyClip]) -> list[KeyClip]:
    """Merge clips that overlap; the merged clip keeps the higher priority and both reasons."""
    merged: list[KeyClip] = []
    for c in sorted(clips, key=lambda c: (c.start_s, c.end_s)):
        if merged and c.start_s < merged[-1].end_s:
            prev = merged[-1]
            pri = prev.priority if PRIORITY_RANK[prev.priority] >= PRIORITY_RANK[c.priority] else c.priority
            reason = prev.reason if not c.reason or c.reason == prev.reason else f"{prev.reason}; {c.reason}".strip("; ")
            merged[-1] = KeyClip(start_s=prev.start_s, end_s=max(prev.end_s, c.end_s), priority=pri, reason=reason)
        else:
            merged.append(c)
    return merged


def parse_clips(text: str, duration_s: float, *, strict: bool = True) -> ParsedClips:
    """Parse the selector's output into clips.

    Accepts prose around the list and code fences. Rejects, with a reason: no JSON list, an empty list,
    an item that is not an object, missing or non-numeric times, start >= end, spans outside
    [0, duration_s], unknown priorities. With `strict=False` bad items are dropped (listed in `dropped`)
    and the rest kept; the output is rejected only when nothing valid remains. Overlapping clips are merged.
    """
    if duration_s <= 0:
        raise ValueError(f"duration_s must be positive, got {duration_s}")
    items = _pick_clip_list(_json_lists(text or ""))
    if items is None:
        return ParsedClips(error="no JSON list of clips found in the output")
    if not items:
        return ParsedClips(error="the clip list is empty")

    clips: list[KeyClip] = []
    problems: list[str] = []
    for i, item in enumerate(items):
        try:
            if not isinstance(item, dict):
                raise ValueError("is not an object")
            start = _as_seconds(item.get("start"), "start")
            end = _as_seconds(item.get("end"), "end")
            if item.get("priority") is None:
                raise ValueError("priority is missing (expected P1 or P2)")
            pri = str(item["priority"]).strip().upper()
            if pri not in PRIORITY_RANK:
                raise ValueError(f"unknown priority {item.get('priority')!r} (expected P1 or P2)")
            if start >= end:
                raise ValueError(f"start {start} is not before end {end}")
            if start < 0 or start >= duration_s:
                raise ValueError(f"start {start}s is outside the video (0..{duration_s:.2f}s)")
            if end > duration_s + DURATION_TOLERANCE_S + 1e-9:
                raise ValueError(f"end {end}s is past the end of the video ({duration_s:.2f}s)")
            reason = item.get("reason", "")
            clips.append(
                KeyClip(start_s=start, end_s=min(end, duration_s), priority=pri, reason=str(reason) if reason else "")
            )
        except ValueError as exc:
            problems.append(f"clip {i}: {exc}")
    if problems and strict:
        return ParsedClips(error="; ".join(problems))
    if not clips:
        return ParsedClips(error="; ".join(problems) or "no valid clip")
    return ParsedClips(clips=_merge_overlapping(clips), dropped=problems)
