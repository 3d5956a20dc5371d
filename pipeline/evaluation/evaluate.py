"""`kframes eval`: answer a benchmark with a frozen downstream model over each selector's frames, for each k.

For every selector and question, the selector's k-independent analysis runs once (cached in
`analyses.jsonl`), then for every k the frames are chosen, decoded, and the downstream model scores the
option letters (`rewards.backends`, the same backends and MCQ prompt as the GRPO reward); the prediction is
the argmax. Each answer is one line of `results.jsonl`, written as soon as it exists, so a killed run
resumes where it stopped and a rerun with more k or another selector only computes what is new.

Outputs in the run folder:
- `results.jsonl`: per question, selector and k: prediction, correctness, option log-probs, frames,
  timestamps, and the cost: selection time (analysis + choice), decode time, downstream time, frames and
  visual tokens;
- `summary.json`, `report.md` (accuracy per k, per task type, the benchmark's own breakdown, cost per
  question, and how many questions were loaded and skipped) and `accuracy_vs_k.png`.

The two JSONL files are append-only journals (one fsynced line per record); a line torn by a kill is
dropped on resume. Everything else is written atomically.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipeline.core.config import DownstreamSection, EvalConfig
from pipeline.core.contracts import EvalQuestion
from pipeline.core.errors import BackendError, DataError, KframesError, VideoError
from pipeline.core.io import Journal, OutputLock, atomic_write_json
from pipeline.core.models import resolve_model
from pipeline.evaluation.benchmarks import check_videos_exist, load_benchmark, missing_videos, write_questions_jsonl
from pipeline.evaluation.report import BREAKDOWNS, summarize, write_reports
from pipeline.inference.frame_selectors import FrameSelector, VideoTimeline, make_selector
from rewards.backends import MCQRequest

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
RESULTS_FILE = "results.jsonl"
ANALYSES_FILE = "analyses.jsonl"


# ----------------------------------------------------------------------------------------------------
# Cost accounting
# ----------------------------------------------------------------------------------------------------


class VisualTokenCounter:
    """Visual tokens the downstream Qwen2.5-VL spends on a frame, as its image processor counts them.

    A frame of h x w pixels is resized so both sides are multiples of patch*merge (28) and its area lies
    in [min_pixels, max_pixels]; each 28x28 block is one token. The processor's own settings are read from
    the downstream model's folder when it is available locally, and capped by `downstream.max_pixels`.
    """

    def __init__(self, downstream: DownstreamSection) -> None:
        self.factor, self.min_pixels, self.max_pixels = 28, 4 * 28 * 28, downstream.max_pixels
        try:
            from transformers import AutoImageProcessor

            path = resolve_model(downstream.model)
            proc = AutoImageProcessor.from_pretrained(path)
            self.factor = int(getattr(proc, "patch_size", 14)) * int(getattr(proc, "merge_size", 2))
            size = getattr(proc, "size", None) or {}
            self.min_pixels = int(getattr(proc, "min_pixels", None) or size.get("shortest_edge", self.min_pixels))
            proc_max = int(getattr(proc, "max_pixels", None) or size.get("longest_edge", self.max_pixels))
            self.max_pixels = min(proc_max, downstream.max_pixels)
        except Exception:  # not available offline (a vLLM model id): Qwen2.5-VL's defaults
            pass
        self.min_pixels = min(self.min_pixels, self.max_pixels)

    def tokens(self, width: int, height: int) -> int:
        f = self.factor
        h = max(f, round(height / f) * f)
        w = max(f, round(width / f) * f)
        if h * w > self.max_pixels:
            beta = math.sqrt(height * width / self.max_pixels)
            h = max(f, math.floor(height / beta / f) * f)
            w = max(f, math.floor(width / beta / f) * f)
        elif h * w < self.min_pixels:
            beta = math.sqrt(self.min_pixels / (height * width))
            h = math.ceil(height * beta / f) * f
            w = math.ceil(width * beta / f) * f
        return (h // f) * (w // f)

    def __call__(self, images: Iterable[Any]) -> int:
        return sum(self.tokens(*im.size) for im in images)


# ----------------------------------------------------------------------------------------------------
# The evaluation loop
# ----------------------------------------------------------------------------------------------------


def _fingerprint(cfg: EvalConfig) -> dict[str, Any]:
    """What makes results comparable: the questions and the downstream model (not the selectors or k)."""
    ds = cfg.downstream
    return {
        "benchmark": cfg.benchmark,
        "data": str(Path(cfg.data).resolve()),
        "video_root": str(Path(cfg.video_root).resolve()) if cfg.video_root else None,
        "downstream": {"backend": ds.backend, "model": ds.model, "url": ds.url, "max_pixels": ds.max_pixels},
    }


def _check_run_folder(out: Path, cfg: EvalConfig) -> None:
    fp = _fingerprint(cfg)
    run_file = out / RUN_FILE
    if run_file.is_file():
        old = json.loads(run_file.read_text())
        if old.get("fingerprint") != fp:
            diff = sorted(k for k in fp if old.get("fingerprint", {}).get(k) != fp[k])
            raise DataError(
                f"{out}: holds results for a different {', '.join(diff)} ({run_file}); use another --out"
            )
    atomic_write_json(run_file, {"fingerprint": fp, "config": cfg.model_dump(mode="json")})


DRY_RUN_QUESTIONS = "questions.jsonl"
DRY_RUN_SUMMARY = "dry_run.json"


def dry_run(cfg: EvalConfig, out: str | None = None) -> dict[str, Any]:
    """Load the benchmark as `evaluate` would, without any model: what was loaded and skipped, the counts per task
    type and duration group, and the videos not found (listed, not an error). With `out`, the questions go to
    `out/questions.jsonl` and this summary to `out/dry_run.json`; a `questions.jsonl` that a dry run did not
    write (no `dry_run.json` beside it) is never overwritten.
    """
    loaded = load_benchmark(cfg.benchmark, cfg.data, video_root=cfg.video_root, strict=cfg.strict)
    questions = loaded.questions[: cfg.limit] if cfg.limit else loaded.questions
    missing = missing_videos(questions)
    summary = {
        **loaded.summary(questions),
        "limit": cfg.limit,
        "videos": {"distinct": len({q.video for q in questions}), "missing": len(missing), "missing_list": missing},
    }
    if out is not None:
        target, marker = Path(out) / DRY_RUN_QUESTIONS, Path(out) / DRY_RUN_SUMMARY
        if target.exists() and not marker.is_file():
            raise DataError(f"{target}: exists and was not written by `kframes eval --dry-run`; choose another --out")
        write_questions_jsonl(target, questions)
        summary["questions_file"] = str(target)
        atomic_write_json(marker, summary)
    return summary


def evaluate(
    cfg: EvalConfig,
    *,
    questions: list[EvalQuestion] | None = None,
    backend: Any = None,
    selectors: list[FrameSelector] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) an evaluation; returns the summary also written to `<output_dir>/summary.json`.

    `questions` default to the benchmark's (`cfg.benchmark`, `cfg.data`): malformed records are skipped and
    counted in the summary's `data` (an error with `cfg.strict`). `backend` (a
    `rewards.backends.DownstreamBackend`) and `selectors` default to those the config describes; passing them
    lets a caller reuse loaded models.
    """
    from tqdm import tqdm

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with OutputLock(out):  # one writer per output folder: a second eval into it fails at once
        _check_run_folder(out, cfg)
        data: dict[str, Any] | None = None
        if questions is None:
            questions, data = load_eval_questions(cfg)
        selectors = make_selectors(cfg) if selectors is None else _distinct_labels(selectors)
        ks = sorted(set(cfg.k))
        # A result is keyed by everything that made it: the selector's model (by content) and settings, k and the
        # question; a rerun into the same folder with another model computes its own rows, never reuses these.
        results = Journal(out / RESULTS_FILE, ("result_id", "k", "question_id"))
        analyses = Journal(out / ANALYSES_FILE, ("selector_id", "question_id"))
        counter = VisualTokenCounter(cfg.downstream)
        frames: Any = None
        metas: dict[str, VideoTimeline] = {}

        for sel in selectors:
            todo = [q for q in questions if any(results.get(sel.result_id, k, q.question_id) is None for k in ks)]
            if not todo:
                continue
            if backend is None:
                from rewards.backends import make_backend

                backend = make_backend(cfg.downstream)
            if frames is None:
                from data_builder.video import FrameCache

                frames = FrameCache(max_videos=max(1, cfg.video_cache))
            for q in tqdm(todo, desc=f"eval {sel.label}", unit="q", disable=not progress):
                try:
                    meta = metas.get(q.video) or VideoTimeline.read(q.video)
                    if len(metas) > 256:
                        metas.clear()
                    metas[q.video] = meta
                    analysis = analyses.get(sel.selector_id, q.question_id)
                    if analysis is None:
                        t0 = time.perf_counter()
                        result = sel.analyze(meta, q.question, q.options)
                        analysis = {"selector_id": sel.selector_id, "question_id": q.question_id,
                                    "analysis_s": time.perf_counter() - t0, "analysis": result}
                        analyses.add(analysis)
                except Exception as exc:  # one bad video or question must not end a day-long run; a rerun retries it
                    message = str(exc) if isinstance(exc, KframesError) else f"{type(exc).__name__}: {exc}"
                    for k in ks:
                        if results.get(sel.result_id, k, q.question_id) is None:
                            results.add(_error_record(sel, q, k, message))
                    continue
                for k in ks:
                    if results.get(sel.result_id, k, q.question_id) is None:
                        try:
                            rec = _answer(sel, q, k, meta, analysis, frames, backend, counter, cfg.downstream)
                        except BackendError:
                            raise  # the downstream server is down: stop, resume later
                        except Exception as exc:
                            message = str(exc) if isinstance(exc, KframesError) else f"{type(exc).__name__}: {exc}"
                            rec = _error_record(sel, q, k, message)
                        results.add(rec)

        return report_results(out, cfg, questions, selectors, results.records.values(), data)


def load_eval_questions(cfg: EvalConfig, *, check_videos: bool = True) -> tuple[list[EvalQuestion], dict[str, Any]]:
    """The benchmark's questions as `evaluate` asks them (malformed records skipped, the first `limit`) and the
    loader's counts for the summary; with `check_videos`, a missing video is an error naming it."""
    loaded = load_benchmark(cfg.benchmark, cfg.data, video_root=cfg.video_root, strict=cfg.strict)
    questions = loaded.questions[: cfg.limit] if cfg.limit else loaded.questions
    if check_videos:
        check_videos_exist(questions, loaded.path)
    for s in loaded.skipped:
        log.warning("skipped %s", s)
    return questions, {**loaded.summary(questions), "limit": cfg.limit}


def make_selectors(cfg: EvalConfig) -> list[FrameSelector]:
    """The recipe's selectors (models load lazily); two with one label are an error."""
    return _distinct_labels([make_selector(s) for s in cfg.selectors])


def _distinct_labels(selectors: list[FrameSelector]) -> list[FrameSelector]:
    labels = [s.label for s in selectors]
    if len(set(labels)) != len(labels):
        raise DataError(f"two selectors share the label {labels}; set `label:` to tell them apart")
    return selectors


def report_results(
    out: Path,
    cfg: EvalConfig,
    questions: list[EvalQuestion],
    selectors: list[FrameSelector],
    records: Iterable[dict[str, Any]],
    data: dict[str, Any] | None,
) -> dict[str, Any]:
    """summary.json, report.md and the plot from the result records of these selectors, k and questions (records
    of other models or settings in the same journal are left out)."""
    ks = sorted(set(cfg.k))
    by_id = {q.question_id: q for q in questions}
    current = {sel.result_id for sel in selectors}
    summary = summarize(
        [_with_question_fields(r, by_id[r["question_id"]]) for r in records
         if r.get("result_id") in current and r["k"] in ks and r["question_id"] in by_id],
        benchmark=reported_benchmark(cfg.benchmark, questions),
        downstream=cfg.downstream,
        selectors=[s.label for s in selectors],
        ks=ks,
        data=data,
    )
    write_reports(out, summary)
    return summary


def reported_benchmark(benchmark: str, questions: list[EvalQuestion]) -> str:
    """The benchmark whose breakdown the report uses: a `jsonl` file of one benchmark's questions (what
    `kframes eval --dry-run --out` writes) is reported as that benchmark."""
    kinds = {q.benchmark for q in questions}
    if benchmark == "jsonl" and len(kinds) == 1 and next(iter(kinds)) in BREAKDOWNS:
        return next(iter(kinds))
    return benchmark


def _with_question_fields(rec: dict[str, Any], q: EvalQuestion) -> dict[str, Any]:
    """A result with its question's task types and duration group as loaded now (what the breakdown groups by)."""
    return {**rec, "task_types": q.task_types, "duration_group": q.duration_group}


def _error_record(sel: FrameSelector, q: EvalQuestion, k: int, error: str) -> dict[str, Any]:
    return {"selector": sel.label, "selector_id": sel.selector_id, "result_id": sel.result_id, "k": k,
            "question_id": q.question_id,
            "task_type": q.task_type, "task_types": q.task_types, "duration_group": q.duration_group,
            "answer": q.answer, "pred": None, "correct": False, "error": error}


def _answer(
    sel: FrameSelector,
    q: EvalQuestion,
    k: int,
    meta: VideoTimeline,
    analysis: dict[str, Any],
    frames: Any,
    backend: Any,
    counter: VisualTokenCounter,
    downstream: DownstreamSection,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    sel_out = sel.choose(analysis["analysis"], meta, k)
    choose_s = time.perf_counter() - t0
    try:
        t1 = time.perf_counter()
        images = frames.images(q.video, sel_out.indices, max_pixels=downstream.max_pixels)
        decode_s = time.perf_counter() - t1
    except VideoError as exc:
        return _error_record(sel, q, k, str(exc))
    request = MCQRequest(images=images, timestamps_s=sel_out.timestamps_s, question=q.question, options=list(q.options))
    t2 = time.perf_counter()
    (logprobs,) = backend.option_logprobs([request])
    downstream_s = time.perf_counter() - t2
    pred = max(range(len(logprobs)), key=lambda i: logprobs[i])
    return {
        "selector": sel.label,
        "selector_id": sel.selector_id,
        "result_id": sel.result_id,
        "k": k,
        "question_id": q.question_id,
        "task_type": q.task_type,
        "task_types": q.task_types,
        "duration_group": q.duration_group,
        "answer": q.answer,
        "pred": pred,
        "correct": pred == q.answer,
        "option_logprobs": [round(float(x), 5) for x in logprobs],
        "frame_indices": sel_out.indices,
        "timestamps_s": [round(t, 3) for t in sel_out.timestamps_s],
        "fallback": sel_out.fallback,
        "analysis_s": analysis["analysis_s"],
        "choose_s": choose_s,
        "selection_s": analysis["analysis_s"] + choose_s,
        "decode_s": decode_s,
        "downstream_s": downstream_s,
        "frames": len(sel_out.indices),
        "visual_tokens": counter(images),
        "info": sel_out.info,
    }

