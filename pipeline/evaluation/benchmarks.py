"""Benchmark loaders: MLVU, Video-MME, LongVideoBench, LVBench, NExT-QA and plain JSONL -> `EvalQuestion`.

Each loader reads the annotation file exactly as its authors publish it (the same files lmms-eval and the
benchmarks' own repositories read), so a user points `kframes eval` at the download and nothing is
converted by hand. Whatever the source, the result is one list of `pipeline.core.contracts.EvalQuestion`:
a video path, the question, the options (without their "A." prefixes) and the index of the answer.

Published formats (field names as in the files):

| benchmark | file | a question is |
| --- | --- | --- |
| `mlvu` (dev, multiple choice) | `MLVU/json/{1_plotQA,2_needle,...}.json` (a JSON array per task, or the folder) | `video`, `question`, `candidates`, `answer` (the option's text), `question_type` |
| `videomme` | `videomme/test-00000-of-00001.parquet` (lmms-lab/Video-MME), or the same rows as JSON/JSONL | `videoID`, `question_id`, `question`, `options` (`"A. ..."`), `answer` (letter), `task_type`, `duration` |
| `longvideobench` | `lvb_val.json` (a JSON array) | `id`, `video_path`, `question`, `candidates`, `correct_choice` (index), `question_category` |
| `lvbench` | `video_info.meta.jsonl` (one video per line) | `key`, `qa: [{uid, question (options inline as "(A) ..."), answer (letter), question_type}]` |
| `nextqa` | `val.csv` / `test.csv` | `video`, `qid`, `question`, `a0`..`a4`, `answer` (index), `type` |
| `jsonl` | one object per line | `video`, `question`, `options`, `answer` (index, letter or option text); optional `question_id`, `task_type` |

Video paths are resolved against `video_root`; each benchmark has a default that matches its download
layout (documented on each loader). Any bad or missing field raises `DataError("FILE:LINE: field: problem")`;
for JSON arrays the line is where the record starts, for parquet it is the row number (1-based).
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pipeline.core.contracts import EvalQuestion
from pipeline.core.errors import DataError
from pipeline.core.io import atomic_write_jsonl, format_validation_error, iter_jsonl

PathLike = str | os.PathLike[str]

# MLVU's multiple-choice tasks: `question_type` -> the folder its videos live in (MLVU/video/<folder>).
MLVU_TASK_DIRS: dict[str, str] = {
    "plotQA": "1_plotQA",
    "findNeedle": "2_needle",
    "ego": "3_ego",
    "count": "4_count",
    "order": "5_order",
    "anomaly_reco": "6_anomaly_reco",
    "topic_reasoning": "7_topic_reasoning",
}
# The open-ended MLVU tasks (no candidates): not multiple choice, so not loaded from a folder.
MLVU_GENERATION_FILES = ("8_sub_scene", "9_summary")

_LETTER_PREFIX = re.compile(r"^\s*\(?([A-Za-z])\s*[\.\):]\s*")
_INLINE_OPTION = re.compile(r"\(([A-Z])\)\s*")


class _Row:
    """One raw record and where it came from, for error messages."""

    __slots__ = ("source", "line", "data")

    def __init__(self, source: Path, line: int, data: dict[str, Any]) -> None:
        self.source, self.line, self.data = source, line, data

    def where(self) -> str:
        return f"{self.source}:{self.line}"

    def fail(self, field: str, problem: str) -> DataError:
        return DataError(f"{self.where()}: {field}: {problem}")

    def get(self, field: str, kind: type | tuple[type, ...] = str, *, required: bool = True) -> Any:
        if field not in self.data or self.data[field] is None:
            if required:
                raise self.fail(field, "missing")
            return None
        value = self.data[field]
        if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # ids are often numbers in CSV/parquet
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise self.fail(field, f"expected {names}, got {type(value).__name__} {value!r}")
        if isinstance(value, str) and not value.strip() and required:
            raise self.fail(field, "empty")
        return value

    def options(self, field: str) -> list[str]:
        raw = self.get(field, (list, tuple))
        opts = []
        for i, o in enumerate(raw):
            if not isinstance(o, (str, int, float)) or isinstance(o, bool):
                raise self.fail(field, f"option {i} is {type(o).__name__}, expected text")
            opts.append(str(o).strip())
        if len(opts) < 2:
            raise self.fail(field, f"needs at least 2 options, got {len(opts)}")
        return opts


def strip_letter(option: str) -> str:
    """`"A. a red car"` -> `"a red car"` (Video-MME style prefixes); other text is returned unchanged."""
    return _LETTER_PREFIX.sub("", option, count=1).strip()


def answer_index(value: Any, options: list[str]) -> int:
    """An answer given as an index, a letter (`"B"`, `"(B)"`, `"B."`) or the option's text -> its index."""
    if isinstance(value, bool):
        raise ValueError(f"answer {value!r} is not an index, a letter or an option")
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        idx = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            idx = int(text)
        elif re.fullmatch(r"\(?[A-Za-z]\)?\.?", text):
            idx = ord(text.strip("().").upper()) - ord("A")
        else:
            norm = [o.strip().rstrip(".").lower() for o in options]
            key = text.rstrip(".").lower()
            if key not in norm:
                raise ValueError(f"answer {value!r} is neither a letter nor one of the options")
            idx = norm.index(key)
    else:
        raise ValueError(f"answer {value!r} is not an index, a letter or an option")
    if not 0 <= idx < len(options):
        raise ValueError(f"answer {value!r} is outside the {len(options)} options")
    return idx


def _question(row: _Row, **fields: Any) -> EvalQuestion:
    try:
        return EvalQuestion(**fields)
    except ValidationError as exc:
        raise DataError(f"{row.where()}: {format_validation_error(exc)}") from None


def _answer(row: _Row, field: str, options: list[str]) -> int:
    value = row.data.get(field)
    if value is None:
        raise row.fail(field, "missing")
    try:
        return answer_index(value, options)
    except ValueError as exc:
        raise row.fail(field, str(exc)) from None


# ----------------------------------------------------------------------------------------------------
# Readers that keep line numbers
# ----------------------------------------------------------------------------------------------------


def iter_json_array(path: Path) -> Iterator[_Row]:
    """Yield each object of a top-level JSON array with the line it starts on."""
    text = _read_text(path)
    decoder = json.JSONDecoder()
    pos = _skip_ws(text, 0)
    if pos >= len(text) or text[pos] != "[":
        raise DataError(f"{path}:1: expected a JSON array of questions")
    pos = _skip_ws(text, pos + 1)
    if pos < len(text) and text[pos] == "]":
        return
    while True:
        line = text.count("\n", 0, pos) + 1
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{line}: expected a JSON object, got {type(obj).__name__}")
        yield _Row(path, line, obj)
        pos = _skip_ws(text, end)
        if pos < len(text) and text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
            continue
        if pos < len(text) and text[pos] == "]":
            return
        raise DataError(f"{path}:{text.count(chr(10), 0, pos) + 1}: expected ',' or ']' in the JSON array")


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason})") from None


def iter_records(path: Path) -> Iterator[_Row]:
    """Rows of a JSON array, JSONL, CSV or parquet file, by extension, each with its line or row number."""
    suffix = path.suffix.lower()
    if suffix == ".json":
        yield from iter_json_array(path)
    elif suffix == ".jsonl":
        for lineno, obj in iter_jsonl(path):
            yield _Row(path, lineno, obj)
    elif suffix == ".csv":
        _read_text(path)  # existence and encoding, with a clear error
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            for row in reader:
                yield _Row(path, reader.line_num, {k: v for k, v in row.items() if k is not None})
    elif suffix == ".parquet":
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        import pyarrow.parquet as pq  # a dependency of `datasets`

        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for a bad file
            raise DataError(f"{path}: not a readable parquet file ({exc})") from None
        for i, rec in enumerate(table.to_pylist(), start=1):
            yield _Row(path, i, rec)
    else:
        raise DataError(f"{path}: unknown annotation file type {suffix!r} (expected .json, .jsonl, .csv or .parquet)")


# ----------------------------------------------------------------------------------------------------
# One loader per benchmark
# ----------------------------------------------------------------------------------------------------


def load_mlvu(path: Path, video_root: Path | None) -> list[EvalQuestion]:
    """MLVU dev multiple-choice: one JSON array per task (`MLVU/json/2_needle.json`) or the `json/` folder.

    Videos: `<video_root>/<task folder>/<video>`, default `video_root` = `MLVU/video` (beside `json/`).
    """
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    files = [f for f in files if not (path.is_dir() and f.stem in MLVU_GENERATION_FILES)]
    if not files:
        raise DataError(f"{path}: no MLVU task files (*.json) found")
    root = video_root or (files[0].parent.parent / "video")
    out = []
    for f in files:
        for i, row in enumerate(iter_json_array(f)):
            qtype = row.get("question_type")
            folder = MLVU_TASK_DIRS.get(qtype, f.stem)
            options = row.options("candidates")
            out.append(
                _question(
                    row,
                    question_id=f"{f.stem}/{i}",
                    video=str(root / folder / row.get("video")),
                    question=row.get("question"),
                    options=options,
                    answer=_answer(row, "answer", options),
                    task_type=qtype,
                    benchmark="mlvu",
                )
            )
    return out


def load_videomme(path: Path, video_root: Path | None) -> list[EvalQuestion]:
    """Video-MME as published by lmms-lab (`videomme/test-00000-of-00001.parquet`), or its rows as JSON/JSONL.

    Videos: `<video_root>/<videoID>.mp4`, default `video_root` = `data/` beside the `videomme/` folder
    (where the `videos_chunked_*.zip` files unpack). `task_type` is Video-MME's own (e.g. "Counting Problem").
    """
    root = video_root or (path.parent.parent / "data")
    out = []
    for row in iter_records(path):
        options = [strip_letter(o) for o in row.options("options")]
        out.append(
            _question(
                row,
                question_id=row.get("question_id"),
                video=str(root / f"{row.get('videoID')}.mp4"),
                question=row.get("question"),
                options=options,
                answer=_answer(row, "answer", options),
                task_type=row.get("task_type", required=False) or "default",
                benchmark="videomme",
            )
        )
    return out


def load_longvideobench(path: Path, video_root: Path | None) -> list[EvalQuestion]:
    """LongVideoBench `lvb_val.json`. Videos: `<video_root>/<video_path>`, default `videos/` beside the file."""
    root = video_root or (path.parent / "videos")
    out = []
    for row in iter_records(path):
        options = row.options("candidates")
        out.append(
            _question(
                row,
                question_id=row.get("id"),
                video=str(root / row.get("video_path")),
                question=row.get("question"),
                options=options,
                answer=_answer(row, "correct_choice", options),
                task_type=row.get("question_category", required=False) or "default",
                benchmark="longvideobench",
            )
        )
    return out


def split_inline_options(row: _Row, text: str) -> tuple[str, list[str]]:
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


def load_lvbench(path: Path, video_root: Path | None) -> list[EvalQuestion]:
    """LVBench `video_info.meta.jsonl`: one video per line with its `qa` list.

    Videos: `<video_root>/<key>.mp4`, default `videos/` beside the file.
    """
    root = video_root or (path.parent / "videos")
    out = []
    for row in iter_records(path):
        key = row.get("key")
        qas = row.get("qa", list)
        for j, qa in enumerate(qas):
            if not isinstance(qa, dict):
                raise row.fail(f"qa.{j}", f"expected an object, got {type(qa).__name__}")
            sub = _Row(row.source, row.line, qa)
            question, options = split_inline_options(sub, sub.get("question"))
            qtype = qa.get("question_type")
            if isinstance(qtype, list):
                qtype = qtype[0] if qtype else None
            out.append(
                _question(
                    sub,
                    question_id=str(sub.get("uid")),
                    video=str(root / f"{key}.mp4"),
                    question=question,
                    options=options,
                    answer=_answer(sub, "answer", options),
                    task_type=str(qtype) if qtype else "default",
                    benchmark="lvbench",
                )
            )
    return out


def load_nextqa(path: Path, video_root: Path | None) -> list[EvalQuestion]:
    """NExT-QA multiple choice (`val.csv`, `test.csv`): columns video, qid, question, a0..a4, answer, type.

    Videos: `<video_root>/<folder>/<video>.mp4` through NExT-QA's `map_vid_vidorID.json` when it is in
    `video_root`, else `<video_root>/<video>.mp4`. Default `video_root` = `NExTVideo/` beside the file.
    """
    root = video_root or (path.parent / "NExTVideo")
    mapping: dict[str, str] = {}
    map_file = root / "map_vid_vidorID.json"
    if map_file.is_file():
        mapping = {str(k): str(v) for k, v in json.loads(map_file.read_text()).items()}
    out = []
    for row in iter_records(path):
        vid = row.get("video")
        cols = sorted((k for k in row.data if re.fullmatch(r"a\d+", k)), key=lambda k: int(k[1:]))
        if not cols:
            raise row.fail("a0", "missing (no option columns a0..a4)")
        options = [row.get(c) for c in cols]
        out.append(
            _question(
                row,
                question_id=f"{vid}_{row.get('qid')}",
                video=str(root / f"{mapping.get(vid, vid)}.mp4"),
                question=row.get("question"),
                options=[o.strip() for o in options],
                answer=_answer(row, "answer", options),
                task_type=row.get("type", required=False) or "default",
                benchmark="nextqa",
            )
        )
    return out


def load_jsonl(path: Path, video_root: Path | None) -> list[EvalQuestion]:
    """Plain JSONL, one question per line: video, question, options, answer (+ question_id, task_type).

    Relative video paths are resolved against `video_root`, default the file's folder.
    """
    root = video_root or path.parent
    out = []
    for row in iter_records(path):
        options = row.options("options")
        video = Path(row.get("video"))
        out.append(
            _question(
                row,
                question_id=row.get("question_id", required=False) or f"{path.stem}:{row.line}",
                video=str(video if video.is_absolute() else root / video),
                question=row.get("question"),
                options=options,
                answer=_answer(row, "answer", options),
                task_type=row.get("task_type", required=False) or "default",
                benchmark=row.get("benchmark", required=False) or "jsonl",
            )
        )
    return out


LOADERS: dict[str, Callable[[Path, Path | None], list[EvalQuestion]]] = {
    "mlvu": load_mlvu,
    "videomme": load_videomme,
    "longvideobench": load_longvideobench,
    "lvbench": load_lvbench,
    "nextqa": load_nextqa,
    "jsonl": load_jsonl,
}
BENCHMARKS = tuple(LOADERS)


def load_questions(
    benchmark: str,
    path: PathLike,
    *,
    video_root: PathLike | None = None,
    limit: int | None = None,
    check_videos: bool = False,
) -> list[EvalQuestion]:
    """Load a benchmark's questions. `check_videos` fails early, naming the first missing video file."""
    name = benchmark.lower().replace("-", "").replace("_", "")
    if name not in LOADERS:
        raise DataError(f"unknown benchmark {benchmark!r}; expected one of {', '.join(BENCHMARKS)}")
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file or folder")
    questions = LOADERS[name](p, Path(video_root) if video_root is not None else None)
    seen: dict[str, int] = {}
    for i, q in enumerate(questions):
        if q.question_id in seen:
            raise DataError(f"{p}: question_id {q.question_id!r} appears twice (questions {seen[q.question_id] + 1} and {i + 1})")
        seen[q.question_id] = i
    if limit is not None:
        questions = questions[:limit]
    if check_videos:
        missing = [q for q in questions if not Path(q.video).is_file()]
        if missing:
            raise DataError(
                f"{p}: {len(missing)} of {len(questions)} videos not found, first {missing[0].video!r} "
                f"(question {missing[0].question_id}); set the video root (--video-root)"
            )
    return questions


def write_questions_jsonl(path: PathLike, questions: list[EvalQuestion]) -> int:
    """Write questions in the plain JSONL format (readable back with `load_questions("jsonl", ...)`)."""
    return atomic_write_jsonl(path, questions)
