"""Hierarchical captions (SPEC section 1): a caption per scene, chapters of consecutive scenes, a video summary.

The paper's annotator sees each scene as a few frames and describes it; consecutive scenes are grouped into
chapters from their captions; the chapters are summarised into one video-level description. The relevance
scorer later reads this hierarchy, so a scene is judged in the context of its chapter and the whole video.

Users with dense-caption datasets can import captions instead (`import_captions`): captions indexed by scene,
or by time span (mapped to the detected scene they overlap most), plus optional chapters and summary. Only
what is missing is asked of the LLM.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from data_builder.llm import GenerationBackend, LLMRequest
from data_builder.parsing import extract_json
from data_builder.video import uniform_indices
from pipeline.core.contracts import Chapter, Scene, SceneCaption, VideoSummary
from pipeline.core.errors import DataError

CAPTION_PROMPT = (
    "These {n} frames come from one scene of a video ({start:.1f}s to {end:.1f}s), in time order. "
    "Describe the scene in one or two sentences: who or what is shown, what happens, colours, shapes, "
    "on-screen text. Answer with the description only."
)

CHAPTER_PROMPT = (
    "Below are the captions of consecutive scenes of a video. Group consecutive scenes that belong to the same "
    "event or topic into chapters, and describe each chapter in one sentence. Every scene belongs to exactly "
    "one chapter, chapters are in order and do not overlap.\n{scenes}\n"
    'Answer with a JSON list: [{{"start_scene": first scene number, "end_scene": last scene number, '
    '"text": "..."}}, ...]'
)

CHAPTER_TEXT_PROMPT = (
    "Below are the captions of consecutive scenes of a video. Describe this part of the video in one sentence.\n"
    "{scenes}\nAnswer with the sentence only."
)

SUMMARY_PROMPT = (
    "Below are the chapters of a video, in order. Summarise the whole video in two or three sentences.\n"
    "{chapters}\nAnswer with the summary only."
)


def scene_frame_indices(scene: Scene, n: int) -> list[int]:
    """`n` frames spread evenly inside the scene (midpoints of n equal parts), as absolute frame indices."""
    return [scene.start_frame + i for i in uniform_indices(scene.num_frames, min(n, scene.num_frames))]


def _scene_lines(scenes: Sequence[Scene], captions: dict[int, str]) -> str:
    return "\n".join(
        f"Scene {s.index} ({s.start_s:.1f}s-{s.end_s:.1f}s): {captions.get(s.index, '').strip() or '(no caption)'}"
        for s in scenes
    )


def caption_scenes(
    llm: GenerationBackend,
    video_path: str,
    scenes: Sequence[Scene],
    *,
    frames_per_scene: int,
    frame_cache: Any,
    max_pixels: int | None = None,
) -> list[SceneCaption]:
    """One caption per scene from `frames_per_scene` of its frames; all scenes of the video in one batch.

    With a server (`llm.pooled`), each scene's request is sent as soon as its frames are decoded, so decoding the
    next scene overlaps the requests in flight; the frames are decoded in scene order, walking forward through the
    video (data_builder.video continues a keyframe group instead of seeking back).
    """

    def requests() -> Iterator[LLMRequest]:
        for s in scenes:
            images = frame_cache.images(video_path, scene_frame_indices(s, frames_per_scene), max_pixels=max_pixels)
            yield LLMRequest(prompt=CAPTION_PROMPT.format(n=len(images), start=s.start_s, end=s.end_s), images=images)

    texts = llm.generate(requests() if getattr(llm, "pooled", False) else list(requests()))
    return [SceneCaption(scene_index=s.index, text=t.strip()) for s, t in zip(scenes, texts, strict=True)]


class _ChapterAnswer(BaseModel):
    model_config = ConfigDict(extra="ignore")
    start_scene: int = Field(ge=0)
    end_scene: int = Field(ge=0)
    text: str = ""


def parse_chapters(text: str, scene_ids: Sequence[int]) -> list[Chapter]:
    """Parse and check the LLM's grouping: a list of chapters that partition the scenes in order.

    Raises ValueError with the reason (fed back to the LLM when re-asking).
    """
    value = extract_json(text, list)
    if value is None:
        raise ValueError("no JSON list found")
    try:
        items = [_ChapterAnswer.model_validate(v) for v in value]
    except ValidationError as exc:
        raise ValueError(f"bad chapter item ({exc.errors()[0]['msg']})") from None
    if not items:
        raise ValueError("empty chapter list")
    expected = list(scene_ids)
    pos = 0
    chapters = []
    for it in items:
        if pos >= len(expected) or it.start_scene != expected[pos]:
            raise ValueError(f"chapter starting at scene {it.start_scene} does not continue from the previous one")
        if it.end_scene not in expected[pos:]:
            raise ValueError(f"chapter {it.start_scene}-{it.end_scene} ends at an unknown scene")
        end_pos = expected.index(it.end_scene, pos)
        chapters.append(Chapter(scene_start=it.start_scene, scene_end=it.end_scene, text=it.text.strip()))
        pos = end_pos + 1
    if pos != len(expected):
        raise ValueError(f"scenes {expected[pos]}..{expected[-1]} are in no chapter")
    return chapters


def fixed_groups(scene_ids: Sequence[int], size: int) -> list[tuple[int, int]]:
    ids = list(scene_ids)
    return [(ids[i], ids[min(i + size, len(ids)) - 1]) for i in range(0, len(ids), size)]


@dataclass
class ChapterResult:
    chapters: list[Chapter]
    method: str  # "llm", "fixed", or "fixed (llm grouping failed: ...)"
    problems: list[str] = field(default_factory=list)


def build_chapters(
    llm: GenerationBackend,
    scenes: Sequence[Scene],
    captions: Sequence[SceneCaption],
    *,
    grouping: str = "llm",
    chapter_size: int = 4,
    max_reasks: int = 1,
) -> ChapterResult:
    """Chapters of consecutive scenes. `llm`: the LLM groups them (re-asked with the parse error up to
    `max_reasks` times); if it never gives a valid partition, fall back to `fixed` groups of `chapter_size`
    scenes, each described by the LLM, and say so in `method`."""
    cap = {c.scene_index: c.text for c in captions}
    ids = [s.index for s in scenes]
    problems: list[str] = []
    if grouping == "llm":
        prompt = CHAPTER_PROMPT.format(scenes=_scene_lines(scenes, cap))
        for _ in range(max_reasks + 1):
            answer = llm.generate([LLMRequest(prompt=prompt)])[0]
            try:
                return ChapterResult(parse_chapters(answer, ids), "llm", problems)
            except ValueError as exc:
                problems.append(str(exc))
                prompt = (
                    CHAPTER_PROMPT.format(scenes=_scene_lines(scenes, cap))
                    + f"\nYour previous answer was invalid ({exc}). Answer again with the JSON list only."
                )
    groups = fixed_groups(ids, chapter_size)
    by_id = {s.index: s for s in scenes}
    requests = []
    for a, b in groups:
        members = [by_id[i] for i in ids[ids.index(a) : ids.index(b) + 1]]
        requests.append(LLMRequest(prompt=CHAPTER_TEXT_PROMPT.format(scenes=_scene_lines(members, cap))))
    texts = llm.generate(requests)
    chapters = [Chapter(scene_start=a, scene_end=b, text=t.strip()) for (a, b), t in zip(groups, texts, strict=True)]
    method = "fixed" if grouping == "fixed" else f"fixed (llm grouping failed: {problems[-1]})"
    return ChapterResult(chapters, method, problems)


def summarize(llm: GenerationBackend, scenes: Sequence[Scene], chapters: Sequence[Chapter]) -> VideoSummary:
    by_id = {s.index: s for s in scenes}
    lines = "\n".join(
        f"Chapter {i + 1} ({by_id[c.scene_start].start_s:.1f}s-{by_id[c.scene_end].end_s:.1f}s): {c.text}"
        for i, c in enumerate(chapters)
    )
    return VideoSummary(text=llm.generate([LLMRequest(prompt=SUMMARY_PROMPT.format(chapters=lines))])[0].strip())


# ----------------------------------------------------------------------------------------------------
# Import
# ----------------------------------------------------------------------------------------------------


@dataclass
class ImportedCaptions:
    """What a captions file gives for one video, before it is matched to the detected scenes."""

    scene_captions: dict[int, str] = field(default_factory=dict)  # by scene index
    span_captions: list[tuple[float, float, str]] = field(default_factory=list)  # by time span
    chapters: list[tuple[float, float, str]] | list[Chapter] = field(default_factory=list)
    summary: str | None = None


def _text(item: dict[str, Any], where: str) -> str:
    """A caption's text: a non-empty string (a null or a number is a mistake in the file, not a caption)."""
    text = item.get("text")
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: text: expected a non-empty string, got {text!r}")
    return text


def _span(item: dict[str, Any], where: str) -> tuple[float, float, str]:
    try:
        start, end = float(item["start_s"]), float(item["end_s"])
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{where}: expected scene_index or start_s/end_s, and text") from None
    text = _text(item, where)
    if not (math.isfinite(start) and math.isfinite(end)) or start < 0:
        raise DataError(f"{where}: start_s/end_s must be finite and not negative, got {start}, {end}")
    if end <= start:
        raise DataError(f"{where}: end_s ({end}) is not after start_s ({start})")
    return start, end, text


def import_captions(path: str | os.PathLike[str]) -> dict[str, ImportedCaptions]:
    """Read a captions JSON: `{video_id: {"scenes": [...], "chapters": [...], "summary": "..."}}`.

    A scene item is `{"scene_index": i, "text": ...}` or `{"start_s": a, "end_s": b, "text": ...}` (dense
    captions; matched to detected scenes by overlap). A chapter item is `{"scene_start", "scene_end", "text"}`
    or `{"start_s", "end_s", "text"}`. A bare list as a video's value means its scene items.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: captions file not found")
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{p}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{p}: not UTF-8 text (byte {exc.start})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{p}: expected an object keyed by video_id, got {type(raw).__name__}")
    out: dict[str, ImportedCaptions] = {}
    for vid, entry in raw.items():
        if isinstance(entry, list):
            entry = {"scenes": entry}
        if not isinstance(entry, dict):
            raise DataError(f"{p}: {vid}: expected an object or a list of scene captions")
        unknown = set(entry) - {"scenes", "chapters", "summary"}
        if unknown:
            raise DataError(f"{p}: {vid}: unknown keys {sorted(unknown)} (expected scenes, chapters, summary)")
        summary = entry.get("summary")
        if summary is not None and (not isinstance(summary, str) or not summary.strip()):
            raise DataError(f"{p}: {vid}: summary: expected a non-empty string, got {summary!r}")
        imp = ImportedCaptions(summary=summary)
        for i, item in enumerate(entry.get("scenes") or []):
            where = f"{p}: {vid}: scenes[{i}]"
            if not isinstance(item, dict):
                raise DataError(f"{where}: expected an object")
            if "scene_index" in item:
                try:
                    index = int(item["scene_index"])
                except (KeyError, TypeError, ValueError):
                    raise DataError(f"{where}: expected an integer scene_index and a text") from None
                imp.scene_captions[index] = _text(item, where)
            else:
                imp.span_captions.append(_span(item, where))
        chapters: list[Any] = []
        for i, item in enumerate(entry.get("chapters") or []):
            where = f"{p}: {vid}: chapters[{i}]"
            if not isinstance(item, dict):
                raise DataError(f"{where}: expected an object")
            if "scene_start" in item:
                try:
                    chapters.append(Chapter.model_validate(item))
                except ValidationError as exc:
                    raise DataError(f"{where}: {exc.errors()[0]['msg']}") from None
            else:
                chapters.append(_span(item, where))
        imp.chapters = chapters
        out[str(vid)] = imp
    return out


def _best_scene(scenes: Sequence[Scene], start: float, end: float) -> Scene | None:
    best, best_overlap = None, 0.0
    for s in scenes:
        overlap = min(end, s.end_s) - max(start, s.start_s)
        if overlap > best_overlap:
            best, best_overlap = s, overlap
    return best


def apply_imported(
    imp: ImportedCaptions, scenes: Sequence[Scene]
) -> tuple[dict[int, str], list[Chapter] | None, VideoSummary | None]:
    """Match imported captions to the detected scenes: (captions by scene index, chapters, summary).

    Span captions go to the scene they overlap most; several for one scene are joined in time order. Span
    chapters become the run of scenes whose midpoints they contain. Imported chapters are used only if they
    cover every scene (else the LLM builds them).
    """
    ids = {s.index for s in scenes}
    caps = {i: t for i, t in imp.scene_captions.items() if i in ids}
    extra: dict[int, list[str]] = {}
    for start, end, text in sorted(imp.span_captions):
        s = _best_scene(scenes, start, end)
        if s is not None:
            extra.setdefault(s.index, []).append(text.strip())
    for i, texts in extra.items():
        caps[i] = " ".join(([caps[i]] if i in caps else []) + texts)
    chapters: list[Chapter] = []
    for ch in imp.chapters:
        if isinstance(ch, Chapter):
            if ch.scene_start in ids and ch.scene_end in ids:
                chapters.append(ch)
            continue
        start, end, text = ch
        inside = [s.index for s in scenes if start <= (s.start_s + s.end_s) / 2 < end]
        if inside:
            chapters.append(Chapter(scene_start=min(inside), scene_end=max(inside), text=text))
    covered = {i for c in chapters for i in ids if c.scene_start <= i <= c.scene_end}
    chapters_out = sorted(chapters, key=lambda c: c.scene_start) if chapters and covered == ids else None
    summary = VideoSummary(text=imp.summary) if imp.summary else None
    return caps, chapters_out, summary
