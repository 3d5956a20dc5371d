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
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from data_builder.captions import apply_imported, build_chapters, caption_scenes, import_captions, summarize
from data_builder.clips import clips_from_scores, is_sparse_enough, keyframe_sparsity
from data_builder.frame_store import STORE_DIRNAME, FrameStore
from data_builder.llm import CachedBackend, LLMRequest, make_llm
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
        self._backend: CachedBackend | None = None
        self._lock = threading.Lock()
        self.identity = f"{cfg.backend}:{cfg.model}"

    @property
    def backend(self) -> CachedBackend:
        with self._lock:  # videos annotated at once share one backend (one pool of requests)
            if self._backend is None:
                self._backend = make_llm(self.cfg, self.cache_dir)
            return self._backend

    @property
    def pooled(self) -> bool:
        """Whether requests go to a server's shared pool (then a request may be sent while the next is prepared)."""
        return self.cfg.backend == "openai"

    def generate(self, requests: Iterable[LLMRequest]) -> list[str]:
        if isinstance(requests, Sequence) and not requests:
            return []
        return self.backend.generate(requests)

    def close(self) -> None:
        with self._lock:
            close = getattr(self._backend.backend if self._backend is not None else None, "close", None)
            if callable(close):
                close()


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
        frames = FrameCache(max_videos=1)  # this video's own reader: videos annotated at once decode independently
        try:
            return self._annotate(video_id, path, frames)
        finally:
            frames.clear()

    def _annotate(self, video_id: str, path: Path, frames: FrameCache) -> tuple[PeakClipsRecord, dict[str, Any]]:
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
                frame_cache=frames, max_pixels=max_px,
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
            frame_cache=frames, max_pixels=max_px,
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


def videos_in_flight(llm_cfg: Any) -> int:
    """Videos annotated at once: several when the LLM is a server (they share its `batch_size` request slots),
    one with an in-process model (its batches, and so its answers, stay exactly those of a sequential build)."""
    if llm_cfg.backend != "openai":
        return 1
    return llm_cfg.videos_in_flight or min(16, max(4, llm_cfg.batch_size // 4))


def settle_video(cfg: Any, out: Path, video_id: str, path: Path, annotator: Any) -> tuple[str, str]:
    """Build one video's record (unless it is done) and its frame store entry: (status, message), status one of
    built, skipped, failed (its own input; recorded in `failed/`) and retry (the server failed)."""
    target = video_file(out, video_id)
    if load_done(target) is not None:
        status = "skipped"
    else:
        try:
            record, meta = annotator().annotate(video_id, path)
        except BackendError as exc:  # the annotating server failed: the video is retried by the next run
            log.error("%s: %s", path, exc)
            return "retry", redact(str(exc))
        except Exception as exc:  # a bad video or bad content must not stop a 6,700-video build
            message = redact(str(exc) if isinstance(exc, KframesError) else f"{path}: {type(exc).__name__}: {exc}")
            atomic_write_json(failed_file(out, video_id), {"video": str(path), "error": message})
            log.error("%s", message)
            return "failed", message
        atomic_write_json(target, {"record": record.model_dump(mode="json"), "meta": meta}, indent=None)
        failed_file(out, video_id).unlink(missing_ok=True)
        status = "built"
    if cfg.frames.store:
        write_frame_store(cfg, out, path)
    return status, ""


def write_frame_store(cfg: Any, out: Path, path: Path) -> dict[str, Any] | None:
    """The video's T candidate frames at the recipe's pixel budget in `<out>/frames` (data_builder.frame_store),
    unless they are there already. A failure is logged, not fatal: training then decodes this video itself."""
    try:
        meta = FrameStore(out / STORE_DIRNAME).write(path, cfg.frames.num_candidates, cfg.frames.max_pixels)
        log.info("%s: frame store %s frames, %.1f MB", path.name, "x".join(map(str, meta["shape"])), meta["bytes"] / 1e6)
        return meta
    except Exception as exc:
        log.warning("%s: frame store entry not written (%s); training will decode this video", path, redact(str(exc)))
        return None


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
    annotators: list[VideoAnnotator] = []
    make_lock = threading.Lock()

    def annotator() -> VideoAnnotator:  # loaded on the first video to build (a resumed, finished build loads nothing)
        with make_lock:
            if not annotators:
                annotators.append(VideoAnnotator(cfg, out, user_queries=user_queries, imported=imported))
            return annotators[0]

    def settle(video_id: str, path: Path) -> tuple[str, str]:
        return settle_video(cfg, out, video_id, path, annotator)

    workers = videos_in_flight(cfg.llm) if len(mine) > 1 else 1
    bar = tqdm(total=len(mine), desc=f"PeakClips {shard_i}/{shard_n}" if shard_n > 1 else "PeakClips", unit="video",
               disable=not progress, file=sys.stderr)
    outcomes: dict[str, tuple[str, str]] = {}
    try:
        if workers <= 1:
            for video_id, path in mine:
                bar.set_postfix_str(video_id[:30])
                outcomes[video_id] = settle(video_id, path)
                bar.update()
        else:  # several videos in flight: their requests share the backend's pool, one's decoding overlaps the rest
            pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="video")
            try:
                futures = {pool.submit(settle, video_id, path): video_id for video_id, path in mine}
                for fut in as_completed(futures):
                    outcomes[futures[fut]] = fut.result()
                    bar.set_postfix_str(futures[fut][:30])
                    bar.update()
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            pool.shutdown()
    finally:
        bar.close()
        for a in annotators:
            a.llm.close()
    for video_id, _ in mine:  # folder order, whatever order the videos finished in
        if video_id not in outcomes:
            continue
        status, message = outcomes[video_id]
        if status == "skipped":
            summary.skipped.append(video_id)
        elif status == "built":
            summary.built.append(video_id)
        else:
            summary.failed[video_id] = message
            if status == "retry":
                summary.retry.append(video_id)

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
