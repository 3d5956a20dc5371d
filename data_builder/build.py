"""`kframes data build`: videos -> scenes -> captions -> queries -> scores -> clips -> PeakClips -> task files.

Layout of the output folder:

    <out>/videos/<video_id>.json   one per video: {"record": PeakClipsRecord, "meta": {stats, notes}}, written atomically
                                   when the video is complete; its presence is what "done" means on a resume
    <out>/llm_cache/               every LLM answer, keyed by model and prompt (data_builder.llm)
    <out>/peakclips.jsonl          all records, one per line, collected at the end (in video order)
    <out>/summary.json             the counts table (videos, scenes, chapters, queries, scores, P1/P2 clips)
    <out>/tasks/{sft1,sft2,grpo}.{train,val}.jsonl

Resuming: a rerun skips every video whose file exists and still validates; a video interrupted half-way is
redone, but each LLM answer it had already received comes from the cache. `--shard i/N` builds every N-th
video starting at i (Slurm job arrays); every shard collects what is complete so far, and the task files are
written once every video of the folder is done (by whichever shard finishes last, or by a plain rerun).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from data_builder.captions import apply_imported, build_chapters, caption_scenes, import_captions, summarize
from data_builder.clips import clips_from_scores, is_sparse_enough, keyframe_sparsity
from data_builder.llm import GenerationBackend, LLMRequest, make_llm
from data_builder.queries import generate_queries, load_user_queries
from data_builder.relevance import SimilarityRefiner, VideoContext, make_scorer
from data_builder.scenes import segment_video
from data_builder.video import VIDEO_EXTENSIONS, FrameCache
from pipeline.core.contracts import PeakClipsRecord, QueryAnnotation, Scene, SceneCaption, VideoInfo
from pipeline.core.errors import BackendError, ConfigError, DataError, KframesError
from pipeline.core.secrets import redact
from pipeline.core.io import atomic_write_json, atomic_write_jsonl

log = logging.getLogger(__name__)


STAT_KEYS = ("scenes", "captions", "chapters", "queries", "scores", "failures", "p1_clips", "p2_clips", "dropped_sparse")


def parse_shard(text: str | None) -> tuple[int, int]:
    """`"i/N"` -> (i, N) with 0 <= i < N; None -> (0, 1)."""
    if text is None:
        return 0, 1
    try:
        i_s, n_s = text.split("/")
        i, n = int(i_s), int(n_s)
    except ValueError:
        raise ConfigError(f"--shard {text!r}: expected i/N, e.g. 0/8") from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"--shard {text!r}: need 0 <= i < N")
    return i, n


def list_videos(videos_dir: str | os.PathLike[str]) -> list[tuple[str, Path]]:
    """(video_id, path) of every video under the folder, sorted. The id is the path relative to the folder
    without its extension, with `/` as `__` (so ids are unique and usable as file names)."""
    root = Path(videos_dir).absolute()  # records name videos by absolute path: training runs elsewhere
    if not root.is_dir():
        raise DataError(f"{root}: videos folder not found")
    out: dict[str, Path] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS:
            vid = p.relative_to(root).with_suffix("").as_posix().replace("/", "__")
            if vid in out:
                raise DataError(f"{root}: {out[vid].name} and {p.name} give the same video id {vid!r}")
            out[vid] = p
    if not out:
        raise DataError(f"{root}: no videos (looked for {', '.join(VIDEO_EXTENSIONS)})")
    return sorted(out.items())


class LazyLLM:
    """Builds the backend on first use: a build with imported captions and a model-free scorer loads nothing."""

    def __init__(self, cfg: Any, cache_dir: Path) -> None:
        self.cfg = cfg
        self.cache_dir = cache_dir
        self._backend: GenerationBackend | None = None
        self.identity = f"{cfg.backend}:{cfg.model}"

    @property
    def backend(self) -> GenerationBackend:
        if self._backend is None:
            self._backend = make_llm(self.cfg, self.cache_dir)
        return self._backend

    def generate(self, requests: Sequence[LLMRequest]) -> list[str]:
        return self.backend.generate(requests) if requests else []


@dataclass
class BuildSummary:
    out_dir: Path
    totals: dict[str, int]
    built: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    retry: list[str] = field(default_factory=list)  # failed because the annotating server did: not settled
    complete: bool = False
    task_counts: dict[str, dict[str, int]] | None = None


def detect(path: Path, video_id: str, scenes_cfg: Any) -> tuple[VideoInfo, list[Scene]]:
    """The video's info and scenes from the histogram segmenter (data_builder.scenes), decoded once."""
    result = segment_video(str(path), scenes_cfg)
    return result.video.model_copy(update={"video_id": video_id, "path": str(path)}), list(result.scenes)


class VideoAnnotator:
    """Everything that turns one video into a PeakClipsRecord; models are loaded once and shared by videos."""

    def __init__(self, cfg: Any, out_dir: Path, *, user_queries: dict[str, list[Any]], imported: dict[str, Any]) -> None:
        self.cfg = cfg
        self.llm = LazyLLM(cfg.llm, out_dir / "llm_cache")
        self.frames = FrameCache(max_videos=2)
        self.scorer = make_scorer(cfg.relevance, self.llm)
        self.refiner = (
            SimilarityRefiner(
                cfg.relevance.similarity_model,
                weight=cfg.relevance.similarity_weight,
                frames_per_scene=cfg.relevance.frames_per_scene,
                device=cfg.llm.device,
            )
            if cfg.relevance.similarity_model
            else None
        )
        self.user_queries = user_queries
        self.imported = imported

    def annotate(self, video_id: str, path: Path) -> tuple[PeakClipsRecord, dict[str, Any]]:
        cfg = self.cfg
        info, scenes = detect(path, video_id, cfg.scenes)
        notes: list[str] = []
        max_px = cfg.llm.max_image_pixels

        # Captions: imported ones first, the LLM for the rest.
        caps: dict[int, str] = {}
        chapters = summary = None
        if video_id in self.imported:
            caps, chapters, summary = apply_imported(self.imported[video_id], scenes)
        missing = [s for s in scenes if s.index not in caps]
        if missing:
            for c in caption_scenes(
                self.llm, str(path), missing, frames_per_scene=cfg.captions.frames_per_scene,
                frame_cache=self.frames, max_pixels=max_px,
            ):
                caps[c.scene_index] = c.text
        captions = [SceneCaption(scene_index=s.index, text=caps[s.index]) for s in scenes]
        if chapters is None:
            res = build_chapters(
                self.llm, scenes, captions, grouping=cfg.captions.chapter_grouping,
                chapter_size=cfg.captions.chapter_size, max_reasks=cfg.captions.max_reasks,
            )
            chapters = res.chapters
            if res.method != "llm" and cfg.captions.chapter_grouping == "llm":
                notes.append(f"chapters: {res.method}")
        if summary is None:
            summary = summarize(self.llm, scenes, chapters)

        # Queries.
        queries = []
        if cfg.queries.source in ("user", "both"):
            queries.extend(self.user_queries.get(video_id, []))
        if cfg.queries.source in ("llm", "both"):
            gen = generate_queries(
                self.llm, video_id, scenes, captions, summary, chapters,
                count=cfg.queries.per_video, num_options=cfg.queries.num_options, max_reasks=cfg.queries.max_reasks,
            )
            queries.extend(gen.queries)
            notes.extend(gen.problems)
        queries = [q.model_copy(update={"video_id": video_id}) for q in queries]

        # Relevance, clips, sparsity.
        ctx = VideoContext(
            video_path=str(path), scenes=scenes, captions=caps, chapters=chapters, summary=summary.text,
            frame_cache=self.frames, max_pixels=max_px,
        )
        results = self.scorer.score(ctx, queries) if queries else []
        annotations, dropped = [], 0
        for q, res in zip(queries, results, strict=True):
            if self.refiner is not None:
                res = self.refiner.refine(ctx, q, res)
            if cfg.clips.sparsity_filter and res.scores:
                sparsity = keyframe_sparsity(
                    scenes, res.scores, info.duration_s,
                    points=cfg.clips.sparsity_points, temperature=cfg.clips.sparsity_temperature,
                )
                if not is_sparse_enough(sparsity, cfg.clips.sparsity_beta):
                    dropped += 1
                    notes.append(f"query {q.query_id}: dropped, relevance not sparse (N*max softmax {sparsity:.2f})")
                    continue
            clips = clips_from_scores(
                scenes, res.scores, p1=cfg.clips.p1_threshold, p2=cfg.clips.p2_threshold,
                merge_adjacent=cfg.clips.merge_adjacent,
            )
            annotations.append(QueryAnnotation(query=q, scores=res.scores, clips=clips, failures=res.failures))

        record = PeakClipsRecord(
            video=info, scenes=scenes, captions=captions, chapters=chapters, summary=summary, queries=annotations
        )
        stats = record_stats(record)
        stats["dropped_sparse"] = dropped
        return record, {"stats": stats, "notes": notes}


def record_stats(rec: PeakClipsRecord) -> dict[str, int]:
    clips = [c for qa in rec.queries for c in qa.clips]
    return {
        "scenes": len(rec.scenes),
        "captions": sum(1 for c in rec.captions if c.text.strip()),
        "chapters": len(rec.chapters),
        "queries": len(rec.queries),
        "scores": sum(len(qa.scores) for qa in rec.queries),
        "failures": sum(len(qa.failures) for qa in rec.queries),
        "p1_clips": sum(1 for c in clips if c.priority == "P1"),
        "p2_clips": sum(1 for c in clips if c.priority == "P2"),
        "dropped_sparse": 0,
    }


def video_file(out_dir: Path, video_id: str) -> Path:
    return out_dir / "videos" / f"{video_id}.json"


def failed_file(out_dir: Path, video_id: str) -> Path:
    """Where a video that failed on its own input (bad video, bad content) is recorded; a rerun tries it again."""
    return out_dir / "failed" / f"{video_id}.json"


def load_done(path: Path) -> tuple[PeakClipsRecord, dict[str, Any]] | None:
    """A finished video's record and stats, or None if it is absent or does not validate (then it is redone)."""
    import json

    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
        return PeakClipsRecord.model_validate(obj["record"]), obj.get("meta", {})
    except (ValueError, KeyError, TypeError, ValidationError) as exc:
        log.warning("%s: unreadable (%s); rebuilding it", path, exc)
        return None


def format_table(totals: dict[str, int]) -> str:
    """The counts table, in the order of the paper's PeakClips statistics."""
    cols = [
        ("videos", "videos"), ("scenes", "scenes"), ("captions", "scene captions"), ("chapters", "chapters"),
        ("queries", "queries"), ("scores", "scene scores"), ("failures", "score failures"),
        ("p1_clips", "P1 clips"), ("p2_clips", "P2 clips"), ("dropped_sparse", "dropped (not sparse)"),
    ]
    width = max(len(label) for _, label in cols)
    return "\n".join(f"  {label:<{width}}  {totals.get(key, 0):>8,}" for key, label in cols)


def build_peakclips(
    cfg: Any,
    *,
    videos_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    shard: str | None = None,
    write_task_files: bool = True,
    progress: bool = True,
) -> BuildSummary:
    """Build (or resume) PeakClips for the videos of one shard, collect what is done, write the task files."""
    from tqdm import tqdm


    out = Path(out_dir)
    shard_i, shard_n = parse_shard(shard)
    videos = list_videos(videos_dir)
    mine = videos[shard_i::shard_n]
    user_queries: dict[str, list[Any]] = {}
    if cfg.queries.source in ("user", "both"):
        if not cfg.queries.file:
            raise ConfigError("queries.file: queries.source is 'user' but no queries file is given (--queries FILE)")
        user_queries = load_user_queries(cfg.queries.file)
        unknown = sorted(set(user_queries) - {v for v, _ in videos})
        if unknown:
            log.warning("queries for videos not in %s: %s", videos_dir, ", ".join(unknown[:5]))
    imported = import_captions(cfg.captions.import_file) if cfg.captions.import_file else {}

    summary = BuildSummary(out_dir=out, totals={})
    annotator: VideoAnnotator | None = None
    bar = tqdm(mine, desc=f"PeakClips {shard_i}/{shard_n}" if shard_n > 1 else "PeakClips", unit="video",
               disable=not progress, file=sys.stderr)
    for video_id, path in bar:
        bar.set_postfix_str(video_id[:30])
        target = video_file(out, video_id)
        if load_done(target) is not None:
            summary.skipped.append(video_id)
            continue
        if annotator is None:
            annotator = VideoAnnotator(cfg, out, user_queries=user_queries, imported=imported)
        try:
            record, meta = annotator.annotate(video_id, path)
        except BackendError as exc:  # the annotating server failed: the video is retried by the next run
            summary.failed[video_id] = redact(str(exc))
            summary.retry.append(video_id)
            log.error("%s: %s", path, exc)
            continue
        except Exception as exc:  # a bad video or bad content must not stop a 6,700-video build
            message = redact(str(exc) if isinstance(exc, KframesError) else f"{path}: {type(exc).__name__}: {exc}")
            summary.failed[video_id] = message
            atomic_write_json(failed_file(out, video_id), {"video": str(path), "error": message})
            log.error("%s", message)
            continue
        atomic_write_json(target, {"record": record.model_dump(mode="json"), "meta": meta}, indent=None)
        failed_file(out, video_id).unlink(missing_ok=True)
        summary.built.append(video_id)

    return _collect(cfg, out, videos, summary, write_task_files=write_task_files)


def merge_peakclips(
    cfg: Any, *, videos_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], write_task_files: bool = True
) -> BuildSummary:
    """Collect what the shards of a build wrote: `peakclips.jsonl`, `summary.json`, and the task files once every
    video of the folder is settled. Builds nothing and calls no model (the merge job of a Slurm job array)."""
    out = Path(out_dir)
    return _collect(cfg, out, list_videos(videos_dir), BuildSummary(out_dir=out, totals={}),
                    write_task_files=write_task_files)


def _collect(
    cfg: Any, out: Path, videos: list[tuple[str, Path]], summary: BuildSummary, *, write_task_files: bool
) -> BuildSummary:
    # Collect every finished video of the folder (other shards' included), in folder order.
    records, totals = [], {k: 0 for k in ("videos", *STAT_KEYS)}
    for video_id, _ in videos:
        done = load_done(video_file(out, video_id))
        if done is None:
            continue
        rec, meta = done
        records.append(rec)
        totals["videos"] += 1
        for k, v in meta.get("stats", record_stats(rec)).items():
            totals[k] = totals.get(k, 0) + int(v)
    atomic_write_jsonl(out / "peakclips.jsonl", records)
    summary.totals = totals
    # Complete: every video of the folder (every shard's) is either done or failed on its own input (`failed/`); a
    # video that failed because the server did is not settled, and neither is another shard's unfinished video.
    bad = {v: json.loads(failed_file(out, v).read_text(encoding="utf-8")).get("error", "")
           for v, _ in videos if not (out / "videos" / f"{v}.json").is_file() and failed_file(out, v).is_file()}
    summary.failed = {**bad, **summary.failed}
    summary.complete = bool(records) and len(records) + len(set(bad) - set(summary.retry)) == len(videos)
    if summary.complete and write_task_files:
        from data_builder.tasks import STAGES, write_tasks

        summary.task_counts = write_tasks(
            records, out, STAGES, num_candidates=cfg.frames.num_candidates, tasks_cfg=cfg.tasks
        )
    atomic_write_json(
        out / "summary.json",
        {
            "videos_in_folder": len(videos),
            "complete": summary.complete,
            "totals": totals,
            "failed": summary.failed,
            "tasks": summary.task_counts,
        },
    )
    return summary
