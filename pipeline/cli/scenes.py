"""`kframes scenes VIDEO|DIR ... [--json] [--out FILE.jsonl] [--workers N] [--config FILE] [--set KEY=VALUE]`.

One `VideoScenes` JSON line per video (`{"video": VideoInfo, "scenes": [Scene, ...]}`).

Resume and atomicity for long folders: each finished video is appended (flushed, fsynced) to `FILE.jsonl.partial`
beside the output; at the end the complete output is written atomically to `FILE.jsonl` and the partial file is
removed. A killed run therefore leaves the old output untouched plus the partial file, and the next run skips every
video found in either (a torn last line of the partial file is ignored and that video is redone). A video that fails
is reported at the end, is not written, and is retried by the next run; the others go on.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from tqdm import tqdm

from data_builder.scenes import segment_video
from data_builder.video import VIDEO_EXTENSIONS
from pipeline.core.config import (
    DataConfig,
    ScenesSection,
    add_config_args,
    apply_overrides,
    load_stage_config,
    validate_config,
)
from pipeline.core.contracts import VideoScenes
from pipeline.core.errors import KframesError, VideoError
from pipeline.core.io import Journal, atomic_write_text, dumps_line, format_validation_error


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "scenes",
        help="segment videos into scenes (histogram differences); one JSON line per video",
        description="Histogram scene segmentation (data_builder.scenes). Inputs are video files or folders "
        "(searched recursively for video files). Settings: the `scenes:` section of a data recipe (--config) "
        "and/or --set scenes.KEY=VALUE.",
    )
    p.add_argument("inputs", nargs="+", metavar="VIDEO|DIR", help="video files and/or folders of videos")
    p.add_argument("--json", action="store_true", help="print one JSON line per video on stdout")
    p.add_argument("--out", metavar="FILE.jsonl", help="write the lines here (atomically); videos already in it are skipped")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="videos segmented in parallel (processes)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    add_config_args(p, required=False)
    p.set_defaults(func=_cmd_scenes)


def load_scenes_config(config: str | None, overrides: list[str]) -> Any:
    """The `scenes` section of a data recipe (or the defaults), after `--set` overrides."""
    if config:
        return load_stage_config("data", config, overrides).scenes  # type: ignore[attr-defined]
    return validate_config(apply_overrides({"stage": "data"}, overrides), DataConfig, "--set").scenes


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Video files in the order given; folders expand to their video files (recursive, sorted). Duplicates dropped."""
    out: list[Path] = []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in VIDEO_EXTENSIONS)
            if not found:
                raise VideoError(f"{p}: folder has no video files ({', '.join(VIDEO_EXTENSIONS)})")
            out.extend(found)
        elif p.exists():
            out.append(p)
        else:
            raise VideoError(f"{p}: no such file or folder")
    seen: set[str] = set()
    unique = []
    for p in out:
        key = str(p.resolve())
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def _done_lines(path: Path) -> list[str]:
    """The `VideoScenes` lines of an earlier run's output; a bad line is an error, so a file that is not ours is
    never overwritten."""
    if not path.is_file():
        return []
    lines = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            VideoScenes.model_validate_json(line)
        except ValidationError as exc:
            raise KframesError(
                f"{path}:{lineno}: not a `kframes scenes` line ({format_validation_error(exc)}); "
                "refusing to overwrite it, choose another --out"
            ) from None
        lines.append(line)
    return lines


def _key(path: str | Path) -> str:
    return str(Path(path).resolve())


def _segment_one(path: str, cfg_json: str) -> tuple[str, str, str]:
    """Worker: (path, "ok", JSON line) or (path, "error", one-line message). Never raises."""
    try:
        result = segment_video(path, ScenesSection.model_validate_json(cfg_json))
        return path, "ok", result.model_dump_json()
    except KframesError as exc:
        return path, "error", str(exc)
    except Exception as exc:  # a bug or an unexpected decoder failure must not stop the other videos
        return path, "error", f"{path}: {type(exc).__name__}: {exc}"


def _run(paths: list[str], cfg_json: str, workers: int) -> Iterator[tuple[str, str, str]]:
    """(path, status, payload) per video, in completion order.

    A worker that dies (the OOM killer, a decoder crash) breaks the whole process pool; the videos it left
    unfinished are then run one per fresh single-worker pool, so the one that kills its worker is reported as
    failed and the others still finish.
    """
    if workers <= 1 or len(paths) <= 1:
        for p in paths:
            yield _segment_one(p, cfg_json)
        return
    unfinished: list[str] = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(_segment_one, p, cfg_json): p for p in paths}
        for fut in as_completed(futures):
            try:
                yield fut.result()
            except BrokenProcessPool:
                unfinished.append(futures[fut])
    for p in sorted(unfinished, key=paths.index):
        with ProcessPoolExecutor(max_workers=1) as pool:
            try:
                yield pool.submit(_segment_one, p, cfg_json).result()
            except BrokenProcessPool:
                yield p, "error", f"{p}: the worker segmenting it died (out of memory, or the decoder crashed)"


def _cmd_scenes(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise KframesError(f"--workers must be at least 1, got {args.workers}")
    cfg = load_scenes_config(args.config, args.overrides)
    videos = expand_inputs(args.inputs)
    out = Path(args.out) if args.out else None
    partial = out.with_name(out.name + ".partial") if out else None
    if out is not None and out.exists() and not out.is_file():
        raise KframesError(f"--out {out}: exists and is not a file")

    done: dict[str, str] = {}  # resolved video path -> JSON line
    if out is not None:
        for line in _done_lines(out):
            done[_key(json.loads(line)["video"]["path"])] = line
        journal = Journal(partial, key=lambda rec: _key(rec["video"]["path"]), check=VideoScenes.model_validate)
        done.update({k: dumps_line(rec) for k, rec in journal.records.items()})
    todo = [str(v) for v in videos if _key(v) not in done]
    if out is not None and len(todo) < len(videos):
        print(f"kframes scenes: {len(videos) - len(todo)} of {len(videos)} videos already in {out}, skipping them",
              file=sys.stderr)

    failures: list[str] = []
    with tqdm(total=len(todo), desc="scenes", unit="video", disable=not args.progress or len(todo) <= 1, file=sys.stderr) as bar:
        for path, status, payload in _run(todo, cfg.model_dump_json(), args.workers):
            bar.update(1)
            if status != "ok":
                failures.append(payload)
                continue
            done[_key(path)] = payload
            if args.json:
                print(payload, flush=True)
            elif out is None:
                record = json.loads(payload)
                kinds = [s.get("boundary") for s in record["scenes"][1:]]
                print(f"{path}: {len(record['scenes'])} scenes ({kinds.count('cut')} cuts, "
                      f"{kinds.count('gradual')} gradual, {kinds.count('split')} splits)", flush=True)
            if out is not None:
                journal.add(json.loads(payload))

    if out is not None:
        order = [_key(v) for v in videos]
        extra = [k for k in done if k not in set(order)]  # lines of earlier runs for videos not named this time
        atomic_write_text(out, "".join(done[k] + "\n" for k in extra + order if k in done))
        if partial is not None:
            partial.unlink(missing_ok=True)
        print(f"kframes scenes: {sum(k in done for k in order)} of {len(videos)} videos in {out}", file=sys.stderr)

    if failures:
        if len(videos) == 1:
            raise VideoError(failures[0].replace("\n", " "))
        for msg in failures:
            print(f"kframes scenes: failed: {msg}", file=sys.stderr)
        print(f"kframes scenes: error: {len(failures)} of {len(videos)} videos failed (rerun to retry them)",
              file=sys.stderr)
        return 2
    return 0
