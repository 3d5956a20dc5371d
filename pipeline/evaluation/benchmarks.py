"""Benchmark loaders: MLVU, Video-MME, LongVideoBench, LVBench, NExT-QA and plain JSONL -> `EvalQuestion`.

Each loader reads the annotation file exactly as its authors publish it (the file a user downloads, the same
one lmms-eval and the benchmark's own scoring code read), so `kframes eval` is pointed at the download and
nothing is converted by hand. Whatever the source, the result is a list of `pipeline.core.contracts.EvalQuestion`:
the video path, the question, the options (without "A." prefixes), the index of the gold answer, every task
type the benchmark gives, the video's duration and the benchmark's duration group where it has them.

Published formats (field names as in the files):

| benchmark | file | a question is |
| --- | --- | --- |
| `mlvu` (dev, multiple choice) | the `MLVU/json/` folder (`1_plotQA.json` ... `7_topic_reasoning.json`; the open-ended 8 and 9 are left out) or one task file | `video`, `duration` (s), `question`, `candidates`, `answer` (the text of a candidate), `question_type` |
| `videomme` | `videomme/test-00000-of-00001.parquet` (lmms-lab/Video-MME), or the same rows as JSON/JSONL | `videoID`, `question_id`, `duration` (short/medium/long), `task_type`, `question`, `options` (`"A. ..."`), `answer` (letter) |
| `longvideobench` | `lvb_val.json` (a JSON array) | `id`, `video_path`, `duration` (s), `duration_group` (15/60/600/3600), `question`, `candidates`, `correct_choice` (index), `question_category` |
| `lvbench` | `video_info.meta.jsonl` (one video per line) | `key`, `video_info.duration_minutes`, `qa: [{uid, question (options inline as "(A) ..."), answer (letter), question_type (a list), time_reference}]` |
| `nextqa` | `val.csv` / `test.csv` with `map_vid_vidorID.json` beside it | `video`, `qid`, `question`, `a0`..`a4`, `answer` (index), `type` |
| `jsonl` | one object per line (what `write_questions_jsonl` and `kframes eval --dry-run --out` write) | `video`, `question`, `options`, `answer` (index, letter or option text); optional `question_id`, `task_type(s)`, `duration_s`, `duration_group` |

A malformed record (a missing field, an answer that is not among the options, an empty record) is skipped and
reported as `FILE:LINE: field: problem` in `LoadResult.skipped`; for JSON arrays the line is where the record
starts, for parquet the row (1-based). `strict=True` makes any malformed record an error. A file whose records
are mostly malformed is the wrong file or the wrong `--benchmark`: that is an error naming the expected layout.
"""

from __future__ import annotations

import json
import logging
import os
import re
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pipeline.core.contracts import EvalQuestion
from pipeline.core.errors import DataError
from pipeline.core.io import atomic_write_jsonl, validation_problems
from pipeline.evaluation.records import (
    MalformedRecord,
    Row,
    Skipped,
    answer_index,
    iter_json_array,
    iter_records,
    letter_index,
    position_index,
    read_text,
    strip_letter,
    text_indices,
)

__all__ = ["BENCHMARKS", "LAYOUTS", "LoadResult", "Skipped", "answer_index", "load_benchmark", "load_questions",
           "strip_letter", "write_questions_jsonl"]

PathLike = str | os.PathLike[str]
log = logging.getLogger(__name__)

# More than this share of malformed records (and more than a couple, for tiny files) means the file is not the
# benchmark's, or not in its layout. The published files have at most 0.14% (MLVU: 3 of 2,175).
MAX_SKIPPED_SHARE = 0.10
TOLERATED_SKIPS = 2

# MLVU's multiple-choice tasks: `question_type` -> its file stem, which is also the folder of its videos.
MLVU_TASK_DIRS: dict[str, str] = {
    "plotQA": "1_plotQA",
    "findNeedle": "2_needle",
    "ego": "3_ego",
    "count": "4_count",
    "order": "5_order",
    "anomaly_reco": "6_anomaly_reco",
    "topic_reasoning": "7_topic_reasoning",
}
# The open-ended MLVU tasks (no candidates): not multiple choice, so not loaded from the folder.
MLVU_GENERATION_FILES = ("8_sub_scene", "9_summary")

# Video-MME reports accuracy per video length: short (< 2 min), medium (4-15 min), long (30-60 min).
VIDEOMME_DURATIONS = ("short", "medium", "long")
# LongVideoBench's `duration_group` (the upper bound in seconds) -> the group as its paper names it.
LVB_DURATION_GROUPS: dict[int, str] = {15: "8-15s", 60: "15-60s", 600: "180-600s", 3600: "900-3600s"}
# NExT-QA reports causal, temporal and descriptive accuracy; its scorer counts TP (temporal previous) with TN.
NEXTQA_GROUPS: dict[str, tuple[str, ...]] = {
    "causal": ("CW", "CH"),
    "temporal": ("TN", "TC", "TP"),
    "descriptive": ("DC", "DL", "DO"),
}

LAYOUTS: dict[str, str] = {
    "mlvu": "MLVU dev: the json/ folder (or one task file such as json/2_needle.json), each a JSON array of "
    "{video, duration, question, candidates: [...], answer: <the text of a candidate>, question_type}",
    "videomme": "Video-MME: videomme/test-00000-of-00001.parquet (or its rows as JSON/JSONL) with videoID, "
    "question_id, duration (short/medium/long), task_type, question, options ['A. ...', ...], answer (a letter)",
    "longvideobench": "LongVideoBench: lvb_val.json, a JSON array of {id, video_path, duration, duration_group, "
    "question, candidates: [...], correct_choice: <index>, question_category}",
    "lvbench": "LVBench: video_info.meta.jsonl, one video per line: {key, video_info: {duration_minutes, ...}, "
    "qa: [{uid, question: '...\\n(A) ...\\n(B) ...', answer: <letter>, question_type: [...], time_reference}]}",
    "nextqa": "NExT-QA: val.csv or test.csv with columns video, frame_count, width, height, question, answer "
    "(index), qid, type, a0..a4, and map_vid_vidorID.json beside it",
    "jsonl": "one JSON object per line: {video, question, options: [...], answer: <index, letter or option text>} "
    "and optionally question_id, task_type or task_types, duration_s, duration_group",
}

_INLINE_OPTION = re.compile(r"\(([A-Z])\)\s*")


# ----------------------------------------------------------------------------------------------------
# Load results
# ----------------------------------------------------------------------------------------------------


@dataclass
class FileCount:
    """Per published file: records read, questions loaded, records skipped."""

    records: int = 0
    questions: int = 0
    skipped: int = 0


@dataclass
class LoadResult:
    """Questions of one benchmark file or folder, and everything that was not loaded, with the reasons."""

    benchmark: str
    path: Path
    questions: list[EvalQuestion]
    skipped: list[Skipped]
    files: dict[str, FileCount]
    notes: list[str] = field(default_factory=list)

    @property
    def records(self) -> int:
        return len(self.questions) + len(self.skipped)

    def skipped_line(self) -> str:
        """`"3 of 2,175 questions skipped"`, the line the summary and the report carry."""
        return f"{len(self.skipped):,} of {self.records:,} questions skipped"

    def summary(self, questions: list[EvalQuestion] | None = None) -> dict[str, Any]:
        """What was loaded: counts per file, per task type and per duration group, the skipped records, notes.

        `questions` (default: all loaded) is what the counts describe, e.g. after `--limit`.
        """
        qs = self.questions if questions is None else questions
        types = Counter(t for q in qs for t in q.task_types)
        groups = Counter(q.duration_group for q in qs if q.duration_group)
        durations = [q.duration_s for q in qs if q.duration_s is not None]
        return {
            "benchmark": self.benchmark,
            "data": str(self.path),
            "records": self.records,
            "questions": len(qs),
            "skipped": len(self.skipped),
            "skipped_line": self.skipped_line(),
            "skipped_records": [str(s) for s in self.skipped],
            "files": {name: vars(c) for name, c in self.files.items()},
            "task_types": dict(sorted(types.items())),
            "duration_groups": dict(sorted(groups.items(), key=lambda kv: _group_order(self.benchmark, kv[0]))),
            "duration_s": (
                {"known": len(durations), "min": round(min(durations), 2),
                 "median": round(statistics.median(durations), 2), "max": round(max(durations), 2)}
                if durations else {"known": 0}
            ),
            "notes": list(self.notes),
        }


def _group_order(benchmark: str, group: str) -> tuple[int, str]:
    order = {"videomme": list(VIDEOMME_DURATIONS), "longvideobench": list(LVB_DURATION_GROUPS.values())}.get(benchmark, [])
    return (order.index(group) if group in order else len(order), group)


def _answer(row: Row, field: str, options: list[str], parse: Callable[[Any, list[str]], int]) -> int:
    value = row.data.get(field)
    if value is None:
        raise row.fail(field, "missing")
    try:
        return parse(value, options)
    except ValueError as exc:
        raise row.fail(field, str(exc)) from None


@dataclass(frozen=True)
class Loaded:
    """A question and the `FILE:LINE` of its record."""

    where: str
    question: EvalQuestion


def _question(row: Row, **fields: Any) -> Loaded:
    try:
        return Loaded(row.where(), EvalQuestion(**fields))
    except ValidationError as exc:
        first = validation_problems(exc)[0]
        name, _, problem = first.partition(": ")
        raise row.fail(name, problem) from None


# ----------------------------------------------------------------------------------------------------
# One loader per benchmark: each yields, per record, the question(s) it holds or why it was skipped
# ----------------------------------------------------------------------------------------------------

Item = Loaded | Skipped


class _Context:
    """What a loader reports besides its items: notes for the summary (e.g. ambiguous gold answers)."""

    def __init__(self) -> None:
        self.notes: list[str] = []


def _each(rows: Iterable[Row | Skipped], make: Callable[[Row], Item | list[Item]]) -> Iterator[Item]:
    for row in rows:
        if isinstance(row, Skipped):
            yield row
            continue
        try:
            out = make(row)
        except MalformedRecord as exc:
            yield exc.skipped
            continue
        yield from (out if isinstance(out, list) else [out])


def mlvu_files(path: Path) -> list[Path]:
    """The multiple-choice task files of an MLVU `json/` folder, or the one file given."""
    if not path.is_dir():
        if path.stem in MLVU_GENERATION_FILES:
            raise DataError(f"{path}: an open-ended MLVU task (no candidates); kframes eval scores the "
                            f"multiple-choice tasks ({', '.join(MLVU_TASK_DIRS.values())})")
        return [path]
    files = [f for f in sorted(path.glob("*.json")) if f.stem not in MLVU_GENERATION_FILES]
    if not files:
        raise DataError(f"{path}: no MLVU task files (*.json) found; expected {LAYOUTS['mlvu']}")
    return files


def load_mlvu(path: Path, video_root: Path | None, ctx: _Context) -> Iterator[Item]:
    """MLVU dev multiple choice: the `json/` folder or one task file.

    The answer is the text of a candidate, compared as text (spaces around it aside; numeric candidates
    included, never read as an index). Where the same text is two candidates (5 records as published) the last one is gold, as in
    MLVU's own scoring (`qa_template` in its choice_bench.py); each such record is listed in the notes.
    Question ids are `<file stem>/<position in the file>`. Videos: `<video_root>/<task folder>/<video>`,
    default `video_root` = `MLVU/video` (beside `json/`).
    """
    files = mlvu_files(path)
    if path.is_dir():
        skipped = [f"{f.name}" for f in sorted(path.glob("*.json")) if f.stem in MLVU_GENERATION_FILES]
        if skipped:
            ctx.notes.append(f"open-ended tasks not loaded (no candidates): {', '.join(skipped)}")
    root = video_root or (files[0].parent.parent / "video")
    for f in files:
        for i, item in enumerate(iter_json_array(f)):
            if isinstance(item, Skipped):
                yield item
                continue
            try:
                yield _mlvu_question(item, i, f, root, ctx)
            except MalformedRecord as exc:
                yield exc.skipped


def _mlvu_question(row: Row, i: int, f: Path, root: Path, ctx: _Context) -> Loaded:
    question, video, qtype = row.get("question"), row.get("video"), row.get("question_type")
    folder = f.stem if f.stem in MLVU_TASK_DIRS.values() else MLVU_TASK_DIRS.get(qtype, f.stem)
    options = row.options("candidates")
    value = row.data.get("answer")
    if value is None:
        raise row.fail("answer", "missing")
    try:
        matches = text_indices(value, options)
    except ValueError as exc:
        raise row.fail("answer", str(exc)) from None
    if not matches:
        raise row.fail("answer", f"{value!r} is not one of the candidates (MLVU gives the answer as a candidate's text)")
    if len(matches) > 1:
        ctx.notes.append(f"{row.where()}: answer: {value!r} is candidates "
                         f"{', '.join(chr(65 + m) for m in matches)}; the last is gold, as in MLVU's scoring")
    return _question(
        row,
        question_id=f"{f.stem}/{i}",
        video=str(root / folder / video),
        question=question,
        options=options,
        answer=matches[-1],
        task_types=[qtype],
        duration_s=row.duration("duration"),
        benchmark="mlvu",
    )


def load_videomme(path: Path, video_root: Path | None, ctx: _Context) -> Iterator[Item]:
    """Video-MME as published by lmms-lab (`videomme/test-00000-of-00001.parquet`), or its rows as JSON/JSONL.

    Videos: `<video_root>/<videoID>.mp4`, default `data/` beside the `videomme/` folder (where the
    `videos_chunked_*.zip` files unpack). The duration is Video-MME's group (short/medium/long), not seconds.
    """
    root = video_root or (path.parent.parent / "data")

    def make(row: Row) -> Loaded:
        options = [strip_letter(o) for o in row.options("options")]
        group = row.get("duration")
        if group not in VIDEOMME_DURATIONS:
            raise row.fail("duration", f"{group!r} is not one of {', '.join(VIDEOMME_DURATIONS)}")
        return _question(
            row,
            question_id=row.get("question_id"),
            video=str(root / f"{row.get('videoID')}.mp4"),
            question=row.get("question"),
            options=options,
            answer=_answer(row, "answer", options, lambda v, o: letter_index(v, len(o))),
            task_types=[row.get("task_type")],
            duration_group=group,
            benchmark="videomme",
        )

    return _each(iter_records(path), make)


def load_longvideobench(path: Path, video_root: Path | None, ctx: _Context) -> Iterator[Item]:
    """LongVideoBench `lvb_val.json`. Videos: `<video_root>/<video_path>`, default `videos/` beside the file."""
    root = video_root or (path.parent / "videos")

    def make(row: Row) -> Loaded:
        options = row.options("candidates")
        group = row.data.get("duration_group")
        if group is not None and (isinstance(group, bool) or not isinstance(group, int)):
            raise row.fail("duration_group", f"expected an integer number of seconds, got {group!r}")
        return _question(
            row,
            question_id=row.get("id"),
            video=str(root / row.get("video_path")),
            question=row.get("question"),
            options=options,
            answer=_answer(row, "correct_choice", options, lambda v, o: position_index(v, len(o))),
            task_types=[row.get("question_category")],
            duration_s=row.duration("duration"),
            duration_group=None if group is None else LVB_DURATION_GROUPS.get(group, f"<={group}s"),
            benchmark="longvideobench",
        )

    return _each(iter_records(path), make)


def split_inline_options(row: Row, text: str) -> tuple[str, list[str]]:
    """`"What ...?\\n(A) x\\n(B) y"` -> ("What ...?", ["x", "y"]): LVBench writes the options into the question."""
    marks = list(_INLINE_OPTION.finditer(text))
    starts = [m for m in marks if m.group(1) == "A"]
    if not starts:
        raise row.fail("question", "no inline options '(A) ...' found")
    first = starts[-1]  # the options come last; an "(A)" inside the question itself comes before them
    seq = [m for m in marks if m.start() >= first.start()]
    options: list[str] = []
    kept, expected = [], "A"
    for m in seq:
        if m.group(1) != expected:
            continue
        kept.append(m)
        expected = chr(ord(expected) + 1)
    for j, m in enumerate(kept):
        end = kept[j + 1].start() if j + 1 < len(kept) else len(text)
        options.append(text[m.end() : end].strip())
    if len(options) < 2 or any(not o for o in options):
        raise row.fail("question", f"could not read the inline options (found {len(options)})")
    return text[: first.start()].strip(), options


def load_lvbench(path: Path, video_root: Path | None, ctx: _Context) -> Iterator[Item]:
    """LVBench `video_info.meta.jsonl`: one video per line with its `qa` list; every question type is kept.

    A question with several types (a third of LVBench's) counts in each of them, as LVBench's own scorer
    (`compute_accuracy`) counts it. A line whose video fields are bad skips its questions, one report each.
    Videos: `<video_root>/<key>.mp4`, default `videos/` beside the file.
    """
    root = video_root or (path.parent / "videos")

    def make(row: Row) -> list[Item]:
        qas = row.data.get("qa")
        if not isinstance(qas, list):
            raise row.fail("qa", "missing" if qas is None else f"expected a list, got {type(qas).__name__}")
        try:
            key = row.get("key")
            info = row.data.get("video_info")
            if info is not None and not isinstance(info, dict):
                raise row.fail("video_info", f"expected an object, got {type(info).__name__}")
            duration = Row(row.source, row.line, info or {}).duration("duration_minutes", scale=60.0)
        except MalformedRecord as exc:  # every question of this video goes
            return [exc.skipped for _ in qas] or [exc.skipped]
        out: list[Item] = []
        for j, qa in enumerate(qas):
            if not isinstance(qa, dict):
                out.append(Skipped(row.where(), f"qa.{j}", f"expected an object, got {type(qa).__name__}"))
                continue
            sub = Row(row.source, row.line, qa)
            try:
                out.append(_lvbench_question(sub, key, duration, root))
            except MalformedRecord as exc:
                s = exc.skipped
                out.append(Skipped(s.where, f"qa.{j}.{s.field}", s.problem))
        return out

    return _each(iter_records(path), make)


def _lvbench_question(sub: Row, key: str, duration: float | None, root: Path) -> Loaded:
    question, options = split_inline_options(sub, sub.get("question"))
    qtypes = sub.data.get("question_type")
    if isinstance(qtypes, str):
        qtypes = [qtypes]
    if not isinstance(qtypes, list) or not qtypes or not all(isinstance(t, str) and t.strip() for t in qtypes):
        raise sub.fail("question_type", f"expected a non-empty list of type names, got {qtypes!r}")
    return _question(
        sub,
        question_id=sub.get("uid"),
        video=str(root / f"{key}.mp4"),
        question=question,
        options=options,
        answer=_answer(sub, "answer", options, lambda v, o: letter_index(v, len(o))),
        task_types=list(dict.fromkeys(t.strip() for t in qtypes)),
        duration_s=duration,
        benchmark="lvbench",
    )


NEXTQA_MAP = "map_vid_vidorID.json"


def load_nextqa(path: Path, video_root: Path | None, ctx: _Context) -> Iterator[Item]:
    """NExT-QA multiple choice (`val.csv`, `test.csv`): columns video, qid, question, a0..a4, answer, type.

    Videos: `<video_root>/<folder>/<video>.mp4` through NExT-QA's `map_vid_vidorID.json`, which is published
    beside the csv (also looked for in `video_root`). Default `video_root` = `NExTVideo/` beside the file.
    Question ids are `<video>_<qid>`, as NExT-QA's own scorer (eval_mc.py) keys them.
    """
    root = video_root or (path.parent / "NExTVideo")
    mapping: dict[str, str] = {}
    candidates = [path.parent / NEXTQA_MAP, root / NEXTQA_MAP]
    map_file = next((p for p in candidates if p.is_file()), None)
    if map_file is None:
        ctx.notes.append(f"{NEXTQA_MAP} not found beside {path.name} or in {root}: videos are looked for as "
                         f"<video root>/<video>.mp4")
    else:
        try:
            raw = json.loads(read_text(map_file))
        except json.JSONDecodeError as exc:
            raise DataError(f"{map_file}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(raw, dict):
            raise DataError(f"{map_file}: expected an object {{video id: 'folder/video id'}}")
        mapping = {str(k): str(v) for k, v in raw.items()}
    unmapped: list[str] = []

    def make(row: Row) -> Loaded:
        vid = row.get("video")
        cols = sorted((k for k in row.data if re.fullmatch(r"a\d+", k or "")), key=lambda k: int(k[1:]))
        if not cols:
            raise row.fail("a0", "missing (no option columns a0..a4)")
        options = [row.get(c) for c in cols]
        if mapping and vid not in mapping:
            unmapped.append(vid)
        return _question(
            row,
            question_id=f"{vid}_{row.get('qid')}",
            video=str(root / f"{mapping.get(vid, vid)}.mp4"),
            question=row.get("question"),
            options=options,
            answer=_answer(row, "answer", options, lambda v, o: position_index(v, len(o))),
            task_types=[row.get("type")],
            benchmark="nextqa",
        )

    yield from _each(iter_records(path), make)
    if unmapped:
        ctx.notes.append(f"{len(set(unmapped))} videos are not in {map_file}, e.g. {unmapped[0]}: looked for as "
                         "<video root>/<video>.mp4")


def load_jsonl(path: Path, video_root: Path | None, ctx: _Context) -> Iterator[Item]:
    """Plain JSONL, one question per line (the fields of `EvalQuestion`; `answer` may be an index, a letter or
    the option's text). Relative video paths are resolved against `video_root`, default the file's folder."""
    root = video_root or path.parent

    def make(row: Row) -> Loaded:
        options = row.options("options")
        video = Path(row.get("video"))
        types = row.data.get("task_types")
        if types is not None and (not isinstance(types, list) or not all(isinstance(t, str) for t in types)):
            raise row.fail("task_types", f"expected a list of type names, got {types!r}")
        fields: dict[str, Any] = {
            "question_id": row.get("question_id", required=False) or f"{path.stem}:{row.line}",
            "video": str(video if video.is_absolute() else root / video),
            "question": row.get("question"),
            "options": options,
            "answer": _answer(row, "answer", options, answer_index),
            "task_type": row.get("task_type", required=False) or "default",
            "task_types": types or [],
            "duration_s": row.duration("duration_s"),
            "duration_group": row.get("duration_group", required=False) or None,
            "benchmark": row.get("benchmark", required=False) or "jsonl",
        }
        return _question(row, **fields)

    return _each(iter_records(path), make)


LOADERS: dict[str, Callable[[Path, Path | None, _Context], Iterator[Item]]] = {
    "mlvu": load_mlvu,
    "videomme": load_videomme,
    "longvideobench": load_longvideobench,
    "lvbench": load_lvbench,
    "nextqa": load_nextqa,
    "jsonl": load_jsonl,
}
BENCHMARKS = tuple(LOADERS)


def benchmark_name(benchmark: str) -> str:
    """`"Video-MME"`, `"video_mme"`, `"videomme"` -> `"videomme"`; unknown names are a DataError."""
    name = benchmark.lower().replace("-", "").replace("_", "")
    if name not in LOADERS:
        raise DataError(f"unknown benchmark {benchmark!r}; expected one of {', '.join(BENCHMARKS)}")
    return name


def load_benchmark(
    benchmark: str,
    path: PathLike,
    *,
    video_root: PathLike | None = None,
    strict: bool = False,
    max_skipped_share: float = MAX_SKIPPED_SHARE,
) -> LoadResult:
    """Every question of a benchmark file (or MLVU folder), the malformed records skipped and reported.

    `strict`: any malformed record is a DataError. More than `max_skipped_share` malformed records (and more
    than `TOLERATED_SKIPS`), or no question at all, is a DataError naming the layout the benchmark expects.
    """
    name = benchmark_name(benchmark)
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file or folder")
    if p.is_dir() and name != "mlvu":
        raise DataError(f"{p}: is a folder; expected {LAYOUTS[name]}")
    ctx = _Context()
    questions: list[EvalQuestion] = []
    skipped: list[Skipped] = []
    files: dict[str, FileCount] = {}
    seen: dict[str, str] = {}
    for item in LOADERS[name](p, Path(video_root) if video_root is not None else None, ctx):
        if isinstance(item, Loaded) and item.question.question_id in seen:
            qid = item.question.question_id
            item = Skipped(item.where, "question_id", f"{qid!r} appears twice (first at {seen[qid]})")
        count = files.setdefault(Path(item.where.rsplit(":", 1)[0]).name, FileCount())
        count.records += 1
        if isinstance(item, Skipped):
            if strict:
                raise DataError(f"{item} (--strict: malformed records are errors)")
            count.skipped += 1
            skipped.append(item)
        else:
            count.questions += 1
            seen[item.question.question_id] = item.where
            questions.append(item.question)
    result = LoadResult(name, p, questions, skipped, files, ctx.notes)
    if not result.records:
        raise DataError(f"{p}: no questions; expected {LAYOUTS[name]}")
    share = len(skipped) / result.records
    if not questions or len(skipped) > max(max_skipped_share * result.records, TOLERATED_SKIPS):
        raise DataError(
            f"{p}: {result.skipped_line()} ({share:.0%}), first {skipped[0]}; this is not the {name} layout: "
            f"expected {LAYOUTS[name]}"
        )
    return result


def load_questions(
    benchmark: str,
    path: PathLike,
    *,
    video_root: PathLike | None = None,
    limit: int | None = None,
    check_videos: bool = False,
    strict: bool = False,
) -> list[EvalQuestion]:
    """The questions of `load_benchmark`, each skipped record logged as a warning.

    `check_videos` fails early, naming the first missing video file (of the first `limit` questions).
    """
    result = load_benchmark(benchmark, path, video_root=video_root, strict=strict)
    for s in result.skipped:
        log.warning("skipped %s", s)
    if result.skipped:
        log.warning("%s: %s", result.path, result.skipped_line())
    questions = result.questions[:limit] if limit is not None else result.questions
    if check_videos:
        check_videos_exist(questions, result.path)
    return questions


def missing_videos(questions: Iterable[EvalQuestion]) -> list[str]:
    """The distinct video files of `questions` that do not exist, in first-use order."""
    return [v for v in dict.fromkeys(q.video for q in questions) if not Path(v).is_file()]


def check_videos_exist(questions: list[EvalQuestion], source: PathLike) -> None:
    missing = missing_videos(questions)
    if missing:
        n = len({q.video for q in questions})
        first = next(q for q in questions if q.video == missing[0])
        raise DataError(
            f"{source}: {len(missing)} of {n} videos not found, first {missing[0]!r} "
            f"(question {first.question_id}); set the video root (--video-root), or see them all with --dry-run"
        )


def write_questions_jsonl(path: PathLike, questions: list[EvalQuestion]) -> int:
    """Write questions in the plain JSONL format (readable back with `load_questions("jsonl", ...)`)."""
    return atomic_write_jsonl(path, questions)
