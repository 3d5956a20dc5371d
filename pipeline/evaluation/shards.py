"""An evaluation split over job array tasks, and the merge that makes it one run again.

Task i of N answers its share of the questions (`shard_by_video`: whole videos, dealt round-robin) into its own
folder, `<run folder>/shards/<i>-of-<N>/`, with the same resumable journals as a one-process run; a requeued task
resumes there. The merge then writes the run folder's `results.jsonl` and `analyses.jsonl` in the order one process
answering every question writes them (selector, question, k), and `summary.json`, `report.md` and the plot from
them with the same code (`report_results`), so the merged run is the one-process run: the same records (each with
its own timings), the same accuracy, breakdowns and plot.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pipeline.core.config import EvalConfig
from pipeline.core.errors import DataError
from pipeline.core.io import Journal, OutputLock, atomic_write_jsonl
from pipeline.evaluation.evaluate import (
    ANALYSES_FILE,
    RESULTS_FILE,
    RUN_FILE,
    _check_run_folder,
    _fingerprint,
    evaluate,
    load_eval_questions,
    make_selectors,
    report_results,
)

SHARDS_DIR = "shards"
T = TypeVar("T")


def shard_dir(out: str | Path, i: int, n: int) -> Path:
    return Path(out) / SHARDS_DIR / f"{i}-of-{n}"


def shard_by_video(items: Sequence[T], i: int, n: int, video: Callable[[T], str]) -> list[T]:
    """Shard i of n: whole videos, dealt round-robin in the order they first appear, items in their own order.

    A video's questions stay together, so each task decodes a video once (its frame cache) and no two tasks decode
    the same one; dealing videos in turn spreads long and short stretches of a benchmark file over the tasks.
    """
    if not 0 <= i < n:
        raise ValueError(f"shard {i}/{n}: need 0 <= i < n")
    order: dict[str, int] = {}
    for item in items:
        order.setdefault(video(item), len(order))
    return [item for item in items if order[video(item)] % n == i]


def evaluate_shard(cfg: EvalConfig, i: int, n: int, *, progress: bool = True) -> dict[str, Any]:
    """Answer shard i of n of the recipe's questions in `shard_dir(cfg.output_dir, i, n)` (resumable)."""
    questions, _ = load_eval_questions(cfg)
    mine = shard_by_video(questions, i, n, video=lambda q: q.video)
    shard_cfg = cfg.model_copy(update={"output_dir": str(shard_dir(cfg.output_dir, i, n))})
    return evaluate(shard_cfg, questions=mine, progress=progress)


def _same_run(shard_fp: dict[str, Any], fp: dict[str, Any]) -> bool:
    """Whether a shard answered the same questions with the same downstream model (a per-task server's address
    aside: each task may have served the model itself)."""
    strip = lambda f: {**f, "downstream": {k: v for k, v in (f.get("downstream") or {}).items() if k != "url"}}
    return strip(shard_fp) == strip(fp)


def merge_eval_shards(cfg: EvalConfig, n: int) -> dict[str, Any]:
    """Join the N shards of `cfg.output_dir` into its results, analyses, summary, report and plot.

    Every (selector, k, question) of the recipe must have its answer in the shard that owns the question; a missing
    one is an error naming the shard (its task did not finish: rerun it, it resumes). Records already in the run
    folder's journals are kept, and the shards' are added after them.
    """
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with OutputLock(out):
        questions, data = load_eval_questions(cfg, check_videos=False)
        selectors = make_selectors(cfg)
        ks = sorted(set(cfg.k))
        owner = {q.question_id: i for i in range(n)
                 for q in shard_by_video(questions, i, n, video=lambda q: q.video)}
        shards: list[tuple[Journal, Journal]] = []
        fp = _fingerprint(cfg)
        for i in range(n):
            d = shard_dir(out, i, n)
            run_file = d / RUN_FILE
            if run_file.is_file() and not _same_run(json.loads(run_file.read_text()).get("fingerprint") or {}, fp):
                raise DataError(f"{d}: this shard answered other questions or another downstream model ({run_file})")
            shards.append((Journal(d / RESULTS_FILE, ("result_id", "k", "question_id")),
                           Journal(d / ANALYSES_FILE, ("selector_id", "question_id"))))
        _check_run_folder(out, cfg)
        results = Journal(out / RESULTS_FILE, ("result_id", "k", "question_id"))
        analyses = Journal(out / ANALYSES_FILE, ("selector_id", "question_id"))
        new_results: dict[Any, dict[str, Any]] = {}
        new_analyses: dict[Any, dict[str, Any]] = {}
        missing: list[str] = []
        for sel in selectors:
            for q in questions:
                i = owner[q.question_id]
                shard_results, shard_analyses = shards[i]
                key = (sel.selector_id, q.question_id)
                analysis = shard_analyses.get(*key)
                if analysis is not None and key not in analyses and key not in new_analyses:
                    new_analyses[key] = analysis
                for k in ks:
                    rkey = (sel.result_id, k, q.question_id)
                    if rkey in results or rkey in new_results:
                        continue
                    rec = shard_results.get(*rkey)
                    if rec is None:
                        missing.append(f"{shard_dir(out, i, n).name}: {sel.label} k={k} {q.question_id}")
                    else:
                        new_results[rkey] = rec
        if missing:
            raise DataError(
                f"{len(missing)} answer(s) missing from the shards of {out} (first: {missing[0]}); their array tasks "
                "did not finish: rerun them (each resumes where it stopped), then merge again"
            )
        all_results = [*results.records.values(), *new_results.values()]
        atomic_write_jsonl(out / RESULTS_FILE, all_results)
        atomic_write_jsonl(out / ANALYSES_FILE, [*analyses.records.values(), *new_analyses.values()])
        return report_results(out, cfg, questions, selectors, all_results, data)
