"""Queries per video: from the user's JSONL, or written by the LLM from the caption hierarchy.

User file, one query per line: `{"video_id": "...", "text": "...", "options": [...], "answer": 1}` (options and
answer optional; `query_id` optional, default `<video_id>-u<line>`). A generated query is a multiple-choice
question whose answer the LLM must locate in one part of the video, so that relevance is sparse (the
setting K-frames is for); a malformed answer is re-asked with the reason, then dropped and recorded.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from data_builder.llm import GenerationBackend, LLMRequest
from data_builder.parsing import extract_json
from pipeline.core.contracts import Chapter, Query, Scene, SceneCaption, VideoSummary
from pipeline.core.errors import DataError
from pipeline.core.io import format_validation_error, iter_jsonl

QUERY_PROMPT = (
    "Here is a description of a video.\nSummary: {summary}\nScenes:\n{scenes}\n"
    "Write {count} multiple-choice questions about specific moments of this video. Each question must be "
    "answerable only from one part of the video, with {num_options} options of which exactly one is correct. "
    'Answer with a JSON list: [{{"question": "...", "options": ["...", ...], "answer": index of the correct '
    "option}}, ...]"
)


def load_user_queries(path: str | os.PathLike[str]) -> dict[str, list[Query]]:
    """Read the user's queries JSONL, grouped by video_id. A bad line is a DataError naming FILE:LINE."""
    out: dict[str, list[Query]] = {}
    seen: set[str] = set()
    for lineno, obj in iter_jsonl(path):
        vid = obj.get("video_id")
        if not isinstance(vid, str) or not vid:
            raise DataError(f"{path}:{lineno}: video_id: missing or not a string")
        obj = {"query_id": f"{vid}-u{lineno}", **obj}
        try:
            q = Query.model_validate(obj)
        except ValidationError as exc:
            raise DataError(f"{path}:{lineno}: {format_validation_error(exc)}") from None
        if q.query_id in seen:
            raise DataError(f"{path}:{lineno}: query_id {q.query_id!r} is used twice")
        seen.add(q.query_id)
        out.setdefault(vid, []).append(q)
    return out


class _GeneratedQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")
    question: str = Field(min_length=3)
    options: list[str] = Field(min_length=2)
    answer: int = Field(ge=0)


@dataclass
class GeneratedQueries:
    queries: list[Query]
    problems: list[str] = field(default_factory=list)


def parse_generated_queries(text: str, video_id: str, num_options: int) -> list[Query]:
    """Parse the LLM's question list; raises ValueError naming the first problem."""
    value = extract_json(text, list)
    if value is None:
        raise ValueError("no JSON list found")
    out = []
    for i, item in enumerate(value):
        try:
            g = _GeneratedQuery.model_validate(item)
            if len(g.options) != num_options:
                raise ValueError(f"{len(g.options)} options, expected {num_options}")
            out.append(
                Query(query_id=f"{video_id}-g{i}", text=g.question, options=g.options, answer=g.answer, video_id=video_id)
            )
        except (ValidationError, ValueError) as exc:
            msg = format_validation_error(exc) if isinstance(exc, ValidationError) else str(exc)
            raise ValueError(f"question {i}: {msg}") from None
    if not out:
        raise ValueError("empty question list")
    return out


def generate_queries(
    llm: GenerationBackend,
    video_id: str,
    scenes: Sequence[Scene],
    captions: Sequence[SceneCaption],
    summary: VideoSummary | None,
    chapters: Sequence[Chapter] = (),
    *,
    count: int,
    num_options: int = 4,
    max_reasks: int = 1,
) -> GeneratedQueries:
    """Ask the LLM for `count` multiple-choice questions; at most `count` are kept."""
    if count <= 0:
        return GeneratedQueries([])
    cap = {c.scene_index: c.text for c in captions}
    lines = "\n".join(f"{s.start_s:.1f}s-{s.end_s:.1f}s: {cap.get(s.index, '')}" for s in scenes)
    base = QUERY_PROMPT.format(
        summary=summary.text if summary else "", scenes=lines, count=count, num_options=num_options
    )
    prompt, problems = base, []
    for _ in range(max_reasks + 1):
        answer = llm.generate([LLMRequest(prompt=prompt)])[0]
        try:
            return GeneratedQueries(parse_generated_queries(answer, video_id, num_options)[:count], problems)
        except ValueError as exc:
            problems.append(f"query generation: {exc}")
            prompt = base + f"\nYour previous answer was invalid ({exc}). Answer again with the JSON list only."
    return GeneratedQueries([], problems)
