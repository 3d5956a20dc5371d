"""`kframes sample` (the any-k sampler on given clips) and `kframes select` (the trained selector on videos).

`sample` needs no model and no video: it shows what a clip prediction turns into for a given k and mode.
`select` runs the selector on one video (or a JSONL batch, resumable) and prints or writes the clips, the frames,
their timestamps, the fallback flag and a timing breakdown; `--sheet` draws the chosen frames.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from pipeline.core.contracts import KeyClip
from tqdm import tqdm

from pipeline.core.config import finite_float, positive_int
from pipeline.core.errors import ConfigError, DataError, KframesError
from pipeline.core.io import Journal, OutputLock, atomic_write_json, atomic_write_jsonl, iter_jsonl, read_jsonl
from pipeline.core.models import model_fingerprint, resolve_model
from pipeline.core.prompt import ParsedClips, parse_clips
from pipeline.core.sampler import MODES, sample_frames
from pipeline.inference.contact_sheet import clips_summary, priorities_from_allocations, write_contact_sheet
from pipeline.inference.selector import Selector, select_frames

SHEET_MAX_PIXELS = 320 * 240


def _add_sampler_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--k", type=positive_int, required=True, help="frame budget")
    p.add_argument(
        "--mode", choices=MODES, default="auto", help="any-k mode (auto: focused for k <= 16, else hybrid)"
    )
    p.add_argument(
        "--background-share", type=finite_float, default=0.25, help="hybrid/soft: share of k outside the clips"
    )
    p.add_argument("--p1-weight", type=finite_float, default=2.0, help="priority weight of P1 clips")
    p.add_argument("--p2-weight", type=finite_float, default=1.0, help="priority weight of P2 clips")


def _sampler_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "background_share": args.background_share,
        "weights": {"P1": args.p1_weight, "P2": args.p2_weight},
    }


# ----------------------------------------------------------------------------------------------------
# kframes sample
# ----------------------------------------------------------------------------------------------------


def _read_clips_arg(value: str) -> str:
    """--clips is JSON text (possibly with prose or code fences, as the selector writes it) or a file holding it."""
    if "[" in value or "\n" in value:
        return value
    p = Path(value)
    if p.is_file():
        return p.read_text(encoding="utf-8")
    raise DataError(f"--clips {value}: no such file, and not a JSON clip list")


def _clips_from_text(text: str, duration_s: float):
    """Clips in the selector's grammar (start/end/priority), parsed by THE parser; KeyClip records
    (start_s/end_s) are accepted too, e.g. clips copied from a PeakClips file."""
    from pydantic import ValidationError


    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if isinstance(value, list) and value and all(isinstance(v, dict) and "start_s" in v for v in value):
        try:
            return ParsedClips(clips=[KeyClip.model_validate(v) for v in value])
        except ValidationError as exc:
            raise DataError(f"--clips: {exc.errors()[0]['msg']}") from None
    return parse_clips(text, duration_s, strict=False)


def _cmd_sample(args: argparse.Namespace) -> int:
    if args.num_frames <= 0 or args.fps <= 0:
        raise ConfigError(f"--num-frames and --fps must be positive (got {args.num_frames}, {args.fps})")
    times = None
    if args.timestamps:
        try:
            times = [float(t) for t in json.loads(Path(args.timestamps).read_text(encoding="utf-8"))]
        except (OSError, ValueError, TypeError) as exc:
            raise DataError(
                f"--timestamps {args.timestamps}: expected a JSON list of seconds ({exc})"
            ) from None
        if len(times) != args.num_frames:
            raise DataError(
                f"--timestamps {args.timestamps}: {len(times)} timestamps for {args.num_frames} frames"
            )
    duration = args.num_frames / args.fps if times is None else times[-1] + 1.0 / args.fps
    parsed = _clips_from_text(_read_clips_arg(args.clips), duration)
    res = sample_frames(
        parsed.clips,
        args.num_frames,
        args.fps,
        args.k,
        args.mode,
        timestamps_s=times,
        **_sampler_kwargs(args),
    )
    out = {
        "k": args.k,
        "mode": res.mode,
        "fallback": res.fallback,
        "fallback_reason": res.fallback_reason if parsed.ok else f"unparseable clips: {parsed.error}",
        "indices": res.indices,
        "timestamps_s": [round(times[i] if times else i / args.fps, 4) for i in res.indices],
        "background": res.background,
        "allocations": res.allocations,
        "token_budget": None if res.token_budget is None else [round(x, 4) for x in res.token_budget],
        "clips": [c.model_dump(mode="json") for c in parsed.clips],
        "dropped": list(parsed.dropped) + res.dropped,
    }
    print(json.dumps(out, indent=2))
    return 0


# ----------------------------------------------------------------------------------------------------
# kframes select
# ----------------------------------------------------------------------------------------------------


def _write_sheet(selector: Any, result: Any, path: Path) -> None:
    images = selector.cache.images(result.video, result.indices, max_pixels=SHEET_MAX_PIXELS)
    flag = f"  [uniform fallback: {result.fallback_reason}]" if result.fallback else ""
    title = f"{result.query}  |  k={result.k} {result.mode}  |  clips: {clips_summary(result.clips)}{flag}"
    write_contact_sheet(
        path,
        images,
        result.indices,
        result.timestamps_s,
        result.clips,
        title=title,
        priorities=priorities_from_allocations(result.indices, result.allocations),
    )


def _load_selector(args: argparse.Namespace) -> Any:
    selector = Selector.from_pretrained(
        args.model, num_candidates=args.num_candidates, max_pixels=args.max_pixels, device=args.device,
        generation={"repetition_penalty": args.repetition_penalty},
    )
    print(f"kframes select: decoding {_describe_generation(selector.generation)}", file=sys.stderr)
    return selector


def _run_one(
    selector: Any,
    args: argparse.Namespace,
    video: str,
    query: str,
    options: list[str] | None,
    k: int,
    mode: str,
):
    return select_frames(
        selector, video, query, k, mode, options, max_new_tokens=args.max_new_tokens, **_sampler_kwargs(args)
    )


def _batch_items(path: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Lines of --batch: {"video", "query", optional "id", "options", "k", "mode"}. Relative video paths are
    resolved against the batch file's folder when they do not exist from the working directory."""
    items, seen = [], set()
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        for key in ("video", "query"):
            if not isinstance(obj.get(key), str) or not obj[key]:
                raise DataError(f"{where}: missing or empty {key!r}")
        unknown = set(obj) - {"id", "video", "query", "options", "k", "mode"}
        if unknown:
            raise DataError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        opts = obj.get("options")
        if opts is not None and (not isinstance(opts, list) or not all(isinstance(o, str) for o in opts)):
            raise DataError(f"{where}: options must be a list of strings")
        k = obj.get("k", args.k)
        if not isinstance(k, int) or k <= 0:
            raise DataError(f"{where}: k must be a positive integer, got {k!r}")
        mode = obj.get("mode", args.mode)
        if mode not in MODES:
            raise DataError(f"{where}: unknown mode {mode!r} (expected one of {', '.join(MODES)})")
        item_id = str(obj.get("id", lineno))
        if item_id in seen:
            raise DataError(f"{where}: duplicate id {item_id!r}")
        seen.add(item_id)
        video = Path(obj["video"])
        if not video.is_absolute() and not video.exists() and (path.parent / video).exists():
            video = path.parent / video
        items.append(
            {"id": item_id, "video": str(video), "query": obj["query"], "options": opts, "k": k, "mode": mode}
        )
    return items


def _item_key(item: dict[str, Any], settings: dict[str, Any]) -> str:
    """What a batch result depends on: the model's content, the selector and sampler settings, the video file,
    the query, its options, k and mode. A rerun with any of them changed computes the item again."""
    video = Path(item["video"])
    stat = video.stat() if video.is_file() else None
    blob = {
        **settings,
        "video": str(video.resolve()),
        "video_file": [stat.st_size, stat.st_mtime_ns] if stat else None,
        **{k: item[k] for k in ("query", "options", "k", "mode")},
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:24]


def _previous_output(out: Path) -> list[dict[str, Any]]:
    """An earlier run's output; a file that is not one (a line without our `id` and `key`) is never overwritten."""
    if not out.exists():
        return []
    if not out.is_file():
        raise DataError(f"--out {out}: exists and is not a file")
    try:
        records = read_jsonl(out)
    except DataError as exc:
        raise DataError(f"--out {out}: not a `kframes select --batch` output ({exc}); choose another --out") from None
    for i, rec in enumerate(records, start=1):
        if not isinstance(rec.get("id"), str) or not isinstance(rec.get("key"), str):
            raise DataError(f"--out {out}: record {i} is not a `kframes select --batch` result; choose another --out")
    return records


def _cmd_select_batch(args: argparse.Namespace) -> int:
    if not args.out:
        raise ConfigError(
            "--batch needs --out FILE.jsonl (results are appended there as they come, and resumed)"
        )
    batch = Path(args.batch)
    items = _batch_items(batch, args)
    out = Path(args.out)
    partial = out.with_name(out.name + ".partial")
    settings = {
        "model": model_fingerprint(resolve_model(args.model)),
        "T": args.num_candidates,
        "max_pixels": args.max_pixels,
        "max_new_tokens": args.max_new_tokens,
        "repetition_penalty": args.repetition_penalty,
        **_sampler_kwargs(args),
    }
    for it in items:
        it["key"] = _item_key(it, settings)
    with OutputLock(out.parent, name=out.name):
        done = {r["key"]: r for r in _previous_output(out)}
        journal = Journal(partial, ("key",))
        done.update({r["key"]: r for r in journal.records.values() if isinstance(r.get("key"), str)})
        todo = list({it["key"]: it for it in reversed(items) if it["key"] not in done}.values())[::-1]
        already = sum(it["key"] in done for it in items)
        if already:
            print(f"kframes select: resuming, {already} of {len(items)} already done", file=sys.stderr)
        sheets = Path(args.sheet) if args.sheet else None
        failed: dict[str, str] = {}
        if todo:
            selector = _load_selector(args)
            for it in tqdm(todo, desc="select", unit="query", file=sys.stderr):
                try:
                    res = _run_one(selector, args, it["video"], it["query"], it["options"], it["k"], it["mode"])
                except Exception as exc:  # one bad video must not stop the batch; it is retried by the next run
                    failed[it["id"]] = str(exc) if isinstance(exc, KframesError) else f"{type(exc).__name__}: {exc}"
                    continue
                rec = {"id": it["id"], "key": it["key"], **res.to_dict()}
                journal.add(rec)
                done[it["key"]] = rec
                if sheets is not None:
                    _write_sheet(selector, res, sheets / f"{it['id']}.png")
        # items with the same content share one result (computed once), each under its own id
        atomic_write_jsonl(out, [{**done[it["key"]], "id": it["id"]} for it in items if it["key"] in done])
        if not failed:
            partial.unlink(missing_ok=True)
    fell = sum(bool(done[it["key"]]["fallback"]) for it in items if it["key"] in done)
    print(
        f"kframes select: {len(items) - len(failed)} of {len(items)} queries -> {out} ({fell} fell back to uniform "
        "frames)", file=sys.stderr
    )
    for item_id, message in failed.items():
        print(f"kframes select: failed: {item_id}: {message}", file=sys.stderr)
    if failed:
        print(f"kframes select: error: {len(failed)} of {len(items)} queries failed (rerun to retry them)",
              file=sys.stderr)
        return 2
    return 0


def _describe_generation(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(settings.items()))


def _cmd_select(args: argparse.Namespace) -> int:
    if args.batch:
        if args.video or args.query:
            raise ConfigError("give either --batch FILE or --video and --query, not both")
        return _cmd_select_batch(args)
    if not args.video or not args.query:
        raise ConfigError("need --video and --query (or --batch FILE.jsonl)")
    selector = _load_selector(args)
    res = _run_one(selector, args, args.video, args.query, args.options, args.k, args.mode)
    if args.sheet:
        _write_sheet(selector, res, Path(args.sheet))
    if args.out:
        atomic_write_json(args.out, res.to_dict())
        t = res.timings
        print(
            f"kframes select: {len(res.indices)} frames ({res.mode}{', uniform fallback' if res.fallback else ''}) -> "
            f"{args.out}; decode {t['decode_s']:.2f}s, model {t['model_s']:.2f}s, sampling {t['sampling_s'] * 1e3:.2f}ms",
            file=sys.stderr,
        )
    else:
        print(json.dumps(res.to_dict(), indent=2, ensure_ascii=False))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample",
        help="turn a clip list into k frame indices with the any-k sampler (no model, no video)",
        description="Print the any-k sampler's result as JSON: indices, timestamps, per-clip allocations, fallback.",
    )
    p.add_argument(
        "--clips",
        required=True,
        help='clip list as JSON (or a file): [{"start": 12.0, "end": 18.5, "priority": "P1"}]',
    )
    p.add_argument("--num-frames", type=positive_int, required=True, help="frames in the video")
    p.add_argument("--fps", type=finite_float, required=True, help="frame rate")
    p.add_argument(
        "--timestamps", help="JSON file with every frame's presentation time (variable frame rate)"
    )
    _add_sampler_args(p)
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser(
        "select",
        help="run the trained selector on a video (or a JSONL batch) and pick k frames",
        description="Prints (or writes with --out) clips, frames, timestamps, the fallback flag and timings.",
    )
    p.add_argument(
        "--model", required=True, help="the selector: a stage's output folder, its final/, or 'tiny'"
    )
    p.add_argument("--video", help="video file")
    p.add_argument("--query", help="the question")
    p.add_argument("--options", nargs="+", help="multiple-choice options (shown to the selector, as in GRPO)")
    p.add_argument(
        "--batch",
        help='JSONL, one {"video", "query", "id"?, "options"?, "k"?, "mode"?} per line (needs --out)',
    )
    p.add_argument("--out", help="write the result here (JSON; JSONL with --batch, resumable)")
    p.add_argument(
        "--sheet", help="contact sheet PNG of the chosen frames (with --batch: a folder, one PNG per id)"
    )
    _add_sampler_args(p)
    p.add_argument(
        "--num-candidates", type=positive_int, default=256, help="T: candidate frames shown to the selector"
    )
    p.add_argument(
        "--max-pixels", type=positive_int, default=None, help="pixels per candidate frame (default: the processor's)"
    )
    p.add_argument("--max-new-tokens", type=positive_int, default=256, help="generation budget")
    p.add_argument("--repetition-penalty", type=finite_float, default=1.0,
                   help="greedy decoding's repetition penalty (default 1.0: none; the checkpoint's own is not used)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto")
    p.set_defaults(func=_cmd_select)
