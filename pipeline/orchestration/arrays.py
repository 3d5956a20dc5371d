"""The data, select and eval stages as job arrays: N shard tasks, then one merge.

    kframes run --config P --only data --shard 3/16       # one task of the array (Slurm: $SLURM_ARRAY_TASK_ID/16)
    kframes run --config P --only data --merge-shards 16  # after every task: the stage's outputs and record

What a shard does:
- data: `build_peakclips(shard=i/N)`, every N-th video of the folder, one `videos/<id>.json` per finished video,
  so a requeued or rerun task redoes only its own unfinished videos. A video that failed on its own input is
  recorded (`failed/`) and settled; one that failed because the annotating server did is not, and the task fails
  (exit 2) so that its array does not count as done.
- select, eval: the questions of whole videos dealt round-robin (`shard_by_video`), answered into
  `<stage>/shards/<i>-of-<N>/` with the same resumable journals as one process.

The merge builds nothing: it collects what the shards wrote into exactly the files one process writes
(`merge_peakclips`, the select journals in question order, `merge_eval_shards`) and marks the stage done.

The stage record is shared: the first task to open a stage whose key changed (or that `kframes submit --force`
started over: a token per submission) clears the stage folder and writes the "running" record under a lock; the
others, and requeued tasks, resume. Shard tasks hold the pipeline folder's lock shared, so a `kframes run` on the
same folder (which holds it exclusively, as the merge does) cannot run beside them.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from data_builder.build import build_peakclips, merge_peakclips, parse_shard
from pipeline.core.errors import ConfigError, DataError
from pipeline.core.io import LockedError, OutputLock
from pipeline.evaluation.shards import evaluate_shard, merge_eval_shards, shard_by_video, shard_dir
from pipeline.orchestration.orchestrate import (
    UPSTREAM,
    Action,
    Plan,
    StageOutcome,
    StageRecord,
    _now,
    check_upstream,
    clear_stage,
    data_stage_result,
    decide,
    eval_stage_result,
    prepare_data,
    select_questions,
)
from pipeline.orchestration.select_stage import merge_select_shards, run_select_stage

logger = logging.getLogger(__name__)

ARRAY_STAGES = ("data", "select", "eval")


def check_array_stage(stage: str) -> None:
    if stage not in ARRAY_STAGES:
        raise ConfigError(f"stage {stage}: only {', '.join(ARRAY_STAGES)} run as job arrays (training uses nodes)")


# ----------------------------------------------------------------------------------------------------
# Locks
# ----------------------------------------------------------------------------------------------------


@contextmanager
def _record_lock(plan: Plan, stage: str, timeout_s: float = 600.0) -> Iterator[None]:
    """A short exclusive lock around reading and writing a stage's record (tasks starting at once wait in turn)."""
    folder = plan.stage_dir(stage)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".kframes.lock.record", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LockedError(f"{folder}: the stage record stayed locked for {timeout_s:.0f}s") from None
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextmanager
def _shared_pipeline_lock(plan: Plan) -> Iterator[None]:
    """The pipeline folder's lock (pipeline.core.io.OutputLock's file), held shared by every shard task."""
    plan.root.mkdir(parents=True, exist_ok=True)
    path = plan.root / ".kframes.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "unknown process"
            raise LockedError(
                f"{plan.root}: another kframes process is running this pipeline ({holder}); shard tasks wait for it"
            ) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": _now(), "command": " ".join(sys.argv[:8])}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------------------
# Shards
# ----------------------------------------------------------------------------------------------------


def open_stage(plan: Plan, stage: str, *, force_token: str | None = None) -> tuple[Action, str]:
    """Decide, under the record lock, whether this stage is done (skip), to resume, or to start over; starting over
    clears its folder and writes the "running" record, once for all the tasks of an array."""
    with _record_lock(plan, stage):
        check_upstream(plan, stage)
        record = plan.read_record(stage)
        action, reason = decide(plan, stage)
        if force_token and (record is None or record.force_token != force_token):
            action, reason = "start", "--force"
        if action == "skip":
            return action, reason
        if action == "start":
            clear_stage(plan, stage)
            plan.stage_dir(stage).mkdir(parents=True, exist_ok=True)
            plan.write_record(StageRecord(
                stage=stage,
                key=plan.keys[stage],
                status="running",
                upstream={u: plan.keys[u] for u in UPSTREAM[stage]},
                config=plan.configs[stage].model_dump(mode="json"),
                attempts=1,
                started_at=_now(),
                force_token=force_token,
            ))
        if stage == "data":
            prepare_data(plan)  # the sample videos, written once (the lock keeps the other tasks waiting)
        return action, reason


def _add_time(plan: Plan, stage: str, seconds: float) -> None:
    with _record_lock(plan, stage):
        record = plan.read_record(stage)
        if record is not None and record.key == plan.keys[stage] and record.status == "running":
            record.seconds_total += seconds
            plan.write_record(record)


def run_shard(plan: Plan, stage: str, shard: str, *, force_token: str | None = None) -> StageOutcome:
    """Run shard `i/N` of an array stage (resumable); the stage stays "running" until its merge."""
    check_array_stage(stage)
    i, n = parse_shard(shard)
    with _shared_pipeline_lock(plan):
        action, reason = open_stage(plan, stage, force_token=force_token)
        if action == "skip":
            return StageOutcome(stage, action, reason, record=plan.read_record(stage))
        t0 = time.perf_counter()
        try:
            with OutputLock(plan.stage_dir(stage), name=f"shard-{i}-of-{n}"):
                summary = {"data": _data_shard, "select": _select_shard, "eval": _eval_shard}[stage](plan, i, n)
        finally:
            elapsed = time.perf_counter() - t0
            _add_time(plan, stage, elapsed)
    logger.info("stage %s, shard %d/%d: %s", stage, i, n, summary)
    return StageOutcome(stage, action, f"{reason}; shard {i}/{n}: {summary}", seconds=elapsed)


def _data_shard(plan: Plan, i: int, n: int) -> dict[str, Any]:
    cfg = plan.configs["data"]
    built = build_peakclips(cfg, videos_dir=cfg.videos_dir, out_dir=plan.stage_dir("data"), shard=f"{i}/{n}",
                            write_task_files=False)
    if built.retry:
        first = built.retry[0]
        raise DataError(
            f"data shard {i}/{n}: {len(built.retry)} video(s) failed because the annotating server did "
            f"({first}: {built.failed.get(first, '')}); rerun the task: it redoes only its unfinished videos"
        )
    return {"built": len(built.built), "resumed": len(built.skipped)}


def _select_shard(plan: Plan, i: int, n: int) -> dict[str, Any]:
    mine = shard_by_video(select_questions(plan), i, n, video=lambda q: q["video"])
    d = shard_dir(plan.stage_dir("select"), i, n)
    _, summary = run_select_stage(
        plan.pipe.select, mine, out=d, questions_file=d / "questions.jsonl",
        model_dir=plan.stage_dir("grpo") / "final", frames=plan.configs["grpo"].frames,
    )
    return summary


def _eval_shard(plan: Plan, i: int, n: int) -> dict[str, Any]:
    summary = evaluate_shard(plan.configs["eval"], i, n)
    return {"questions": sum(cell["n"] for by_k in summary["selectors"].values() for cell in by_k.values())}


# ----------------------------------------------------------------------------------------------------
# Merge
# ----------------------------------------------------------------------------------------------------


def merge_stage(plan: Plan, stage: str, shards: int) -> StageOutcome:
    """Join the `shards` shards of an array stage into its outputs and mark it done (what its merge job runs)."""
    check_array_stage(stage)
    if shards < 1:
        raise ConfigError(f"--merge-shards {shards}: need at least one shard")
    with OutputLock(plan.root):  # exclusive: no shard task of this pipeline is running
        check_upstream(plan, stage)
        action, reason = decide(plan, stage)
        if action == "skip":
            return StageOutcome(stage, action, reason, record=plan.read_record(stage))
        record = plan.read_record(stage)
        if record is None or record.key != plan.keys[stage]:
            raise ConfigError(
                f"stage {stage}: no shard has run with its current config ({plan.record_path(stage)} "
                f"{'is missing' if record is None else 'has another key'}); run the array first "
                f"(`kframes submit {stage}`), or the stage in one process (`kframes run --only {stage}`)"
            )
        t0 = time.perf_counter()
        outputs, summary = {"data": _merge_data, "select": _merge_select, "eval": _merge_eval}[stage](plan, shards)
        elapsed = time.perf_counter() - t0
        record.status = "done"
        record.outputs = outputs
        record.summary = {**summary, "shards": shards}
        record.finished_at = _now()
        record.seconds = elapsed
        record.seconds_total += elapsed
        plan.write_record(record)
    return StageOutcome(stage, "resume", f"merged {shards} shard(s)", seconds=elapsed, record=record)


def _merge_data(plan: Plan, shards: int) -> tuple[dict[str, str], dict[str, Any]]:
    cfg = prepare_data(plan)
    out = plan.stage_dir("data")
    return data_stage_result(merge_peakclips(cfg, videos_dir=cfg.videos_dir, out_dir=out), out)


def _merge_select(plan: Plan, shards: int) -> tuple[dict[str, str], dict[str, Any]]:
    return merge_select_shards(select_questions(plan), out=plan.stage_dir("select"),
                               questions_file=plan.questions_file, shards=shards)


def _merge_eval(plan: Plan, shards: int) -> tuple[dict[str, str], dict[str, Any]]:
    return eval_stage_result(merge_eval_shards(plan.configs["eval"], shards), plan.stage_dir("eval"))
