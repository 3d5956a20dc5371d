"""`kframes run`: the whole curriculum, data -> sft1 -> sft2 -> grpo -> select -> eval, as one resumable job.

Each stage is a function of its recipe and of what the stages before it wrote, so each gets a **key**: a
hash of its resolved config, the keys of the stages it reads from, and the fingerprint of any outside input
(the videos, a questions file). When a stage finishes, `<output_dir>/<stage>/pipeline.json` (a `StageRecord`)
records its key, status, time and outputs; on the next run a stage whose record says "done" with the same
key, and whose own outputs are in place (for a training stage: `final/stage.json` with the same config hash),
is skipped. Changing one recipe therefore reruns that stage and everything after it, and nothing else.

Killing the job at any point is safe: the record of the stage in progress says "running" with its key, so
the rerun resumes it (training from its newest complete checkpoint, data/select/eval from their per-item
journals) rather than starting over; a stage whose key changed since is started over from scratch.

The stages run in this process, one after the other (`kframes run` is the one-machine path). On a cluster,
`kframes submit` runs the same code one stage per Slurm job (`kframes run --only STAGE`, under
`accelerate launch` for training; data, select and eval also as job arrays of shards and a merge,
pipeline.orchestration.arrays), so records written there are honoured here and vice versa.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from data_builder.build import build_peakclips
from pipeline.core.config import (
    GRPO_ENDPOINT_FIELDS,
    STAGES,
    TRAIN_STAGES,
    PipelineConfig,
    Section,
    load_config,
    load_recipe,
    load_yaml,
    without_fields,
)
from pipeline.core.errors import ConfigError, DataError
from pipeline.core.io import OutputLock, atomic_write_json
from pipeline.evaluation.evaluate import evaluate
from pipeline.orchestration.select_stage import heldout_questions, run_select_stage
from stages.manifest import read_manifest

logger = logging.getLogger(__name__)

# What each stage reads: its key includes theirs, and it cannot run before they are done.
UPSTREAM: dict[str, tuple[str, ...]] = {
    "data": (),
    "sft1": ("data",),
    "sft2": ("data", "sft1"),
    "grpo": ("data", "sft2"),
    "select": ("data", "grpo"),
    "eval": ("grpo", "select"),
}
RECORD_NAME = "pipeline.json"
SAMPLES_DIR = "samples"
SHARDS_DIR = "shards"  # select and eval run as job arrays: one folder per shard, merged into the stage's outputs

# Where a stage finds a server, not what it computes: left out of the stage keys, so that a job that gets its
# server's address from Slurm (another node after a requeue, a per-task port) resumes instead of starting over.
ENDPOINT_FIELDS: dict[str, tuple[str, ...]] = {
    "data": ("llm.base_url",),
    "grpo": GRPO_ENDPOINT_FIELDS,
    "eval": ("downstream.url",),
}


class StageRecord(BaseModel):
    """`<output_dir>/<stage>/pipeline.json`: the orchestrator's record of one stage (its manifest for data,
    select and eval; training stages also have their own `final/stage.json`)."""

    model_config = ConfigDict(extra="forbid")

    stage: str
    key: str = Field(description="sha256 of the resolved config, the upstream keys and the outside inputs")
    status: Literal["running", "done"]
    upstream: dict[str, str] = Field(default_factory=dict, description="upstream stage -> its key")
    config: dict[str, Any] = Field(default_factory=dict, description="the resolved stage config")
    outputs: dict[str, str] = Field(default_factory=dict, description="what the stage produced (paths)")
    summary: dict[str, Any] = Field(default_factory=dict, description="a few numbers worth a glance")
    attempts: int = Field(0, description="how many times the stage was started with this key")
    force_token: str | None = Field(
        None, description="job arrays: the `kframes submit --force` that last started the stage over (once per submission)"
    )
    started_at: str | None = None
    finished_at: str | None = None
    seconds: float | None = Field(None, description="wall time of the attempt that finished it")
    seconds_total: float = Field(0.0, description="wall time over all attempts with this key")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def _sha256(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def file_fingerprint(path: str | Path | None) -> str | None:
    """Content hash of a file, or a listing hash (name, size, mtime) of a folder; None when absent."""
    if path is None:
        return None
    p = Path(path)
    if p.is_file():
        h = hashlib.sha256()
        with p.open("rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
        return h.hexdigest()
    if p.is_dir():  # videos: hashing terabytes of video is not an option; name, size and mtime tell edits apart
        items = sorted(
            (str(f.relative_to(p)), f.stat().st_size, f.stat().st_mtime_ns) for f in p.rglob("*") if f.is_file()
        )
        return _sha256(items)
    return None


# ----------------------------------------------------------------------------------------------------
# The plan: every stage's resolved config and key, computed before anything runs
# ----------------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """The pipeline with each stage's config rewired to its neighbours, and each stage's key."""

    pipe: PipelineConfig
    source: str
    configs: dict[str, Section] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return Path(self.pipe.output_dir)

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    @property
    def samples_dir(self) -> Path:
        return self.root / SAMPLES_DIR

    @property
    def stages(self) -> list[str]:
        return [s for s in STAGES if s != "eval" or self.pipe.stages.eval is not None]

    def tasks_file(self, stage: str, split: str) -> Path:
        return self.stage_dir("data") / "tasks" / f"{stage}.{split}.jsonl"

    @property
    def questions_file(self) -> Path:
        """The held-out questions the select stage writes and the eval stage reads (EvalQuestion JSONL)."""
        return self.stage_dir("select") / "questions.jsonl"

    def record_path(self, stage: str) -> Path:
        return self.stage_dir(stage) / RECORD_NAME

    def read_record(self, stage: str) -> StageRecord | None:
        path = self.record_path(stage)
        if not path.is_file():
            return None
        try:
            return StageRecord.model_validate_json(path.read_text())
        except ValidationError as exc:
            raise DataError(f"{path}: not a pipeline stage record ({exc.errors()[0].get('msg')})") from None

    def write_record(self, record: StageRecord) -> None:
        atomic_write_json(self.record_path(record.stage), record)


def make_plan(pipe: PipelineConfig, source: str = "pipeline") -> Plan:
    """Resolve every stage's recipe with the pipeline's wiring and compute the stage keys."""
    plan = Plan(pipe=pipe, source=source)
    root = plan.root
    ov = pipe.overrides

    data_wiring: dict[str, Any] = {"output_dir": str(root / "data")}
    if pipe.samples is not None:
        data_wiring.update(
            {
                "videos_dir": str(plan.samples_dir / "videos"),
                "captions.import_file": str(plan.samples_dir / "captions.json"),
                "queries.source": "user",
                "queries.file": str(plan.samples_dir / "queries.jsonl"),
            }
        )
    plan.configs["data"] = load_recipe("data", pipe.stages.data, ov.get("data", []), wiring=data_wiring)

    previous: str | None = None
    for stage in TRAIN_STAGES:
        val = plan.tasks_file(stage, "val")
        wiring: dict[str, Any] = {
            "output_dir": str(root / stage),
            "data.train_file": str(plan.tasks_file(stage, "train")),
            # whether the data stage writes a validation split is only known after it ran; keep the recipe's choice
        }
        if previous is not None:
            wiring["init_from"] = str(root / previous)
        recipe_path = getattr(pipe.stages, stage)
        raw = load_yaml(recipe_path)
        if (raw.get("data") or {}).get("eval_file") is not None:
            wiring["data.eval_file"] = str(val)
        plan.configs[stage] = load_recipe(stage, recipe_path, ov.get(stage, []), wiring=wiring)
        previous = stage

    plan.configs["select"] = pipe.select
    if pipe.stages.eval is not None:

        def trained_selector(raw: dict[str, Any]) -> None:  # the pipeline evaluates the selector it just trained
            for sel in raw.get("selectors") or []:
                if isinstance(sel, dict) and sel.get("name") == "kframes":
                    sel["model"] = str(root / "grpo")

        wiring: dict[str, Any] = {"output_dir": str(root / "eval")}
        if pipe.eval_on == "heldout":
            wiring.update({"data": str(plan.questions_file), "benchmark": "jsonl", "video_root": None})
        plan.configs["eval"] = load_recipe(
            "eval", pipe.stages.eval, ov.get("eval", []), wiring=wiring, finish=trained_selector
        )

    for stage in plan.stages:
        outside: dict[str, Any] = {}
        if stage == "data":
            if pipe.samples is not None:
                outside["samples"] = pipe.samples.model_dump(mode="json")
            else:
                cfg = plan.configs["data"]
                outside["videos"] = file_fingerprint(getattr(cfg, "videos_dir", None))
                outside["captions"] = file_fingerprint(cfg.captions.import_file)
                outside["queries"] = file_fingerprint(cfg.queries.file)
        if stage == "select" and pipe.select.questions:
            outside["questions"] = file_fingerprint(pipe.select.questions)
        plan.keys[stage] = _sha256(
            {
                "stage": stage,
                "config": without_fields(plan.configs[stage].model_dump(mode="json"), ENDPOINT_FIELDS.get(stage, ())),
                "upstream": {u: plan.keys[u] for u in UPSTREAM[stage]},
                "outside": outside,
            }
        )
    return plan


def load_pipeline(path: str, overrides: Sequence[str] | None = None) -> Plan:
    """Read a pipeline config (configs/pipeline/*.yaml) and resolve its plan.

    `overrides` apply to the pipeline file itself (`output_dir=runs/x`, `select.k=16`), or, written
    `STAGE:KEY=VALUE`, to one stage's recipe after the pipeline's own (`sft1:train.max_steps=2`).
    """
    own, per_stage = [], {}
    for item in overrides or []:
        head, sep, rest = item.partition(":")
        if sep and head in STAGES and "=" not in head:
            per_stage.setdefault(head, []).append(rest)
        else:
            own.append(item)
    pipe = load_config(path, PipelineConfig, own)
    for stage, items in per_stage.items():
        if stage == "select":
            raise ConfigError("--set select:...: the select stage is configured in the pipeline file (select.KEY=VALUE)")
        pipe.overrides[stage] = [*pipe.overrides.get(stage, []), *items]
    for stage in ("data", "sft1", "sft2", "grpo", "eval"):
        recipe = getattr(pipe.stages, stage)
        if recipe is not None and not Path(recipe).is_file():
            raise ConfigError(f"{path}: stages.{stage}: recipe {recipe} not found")
    return make_plan(pipe, source=path)


# ----------------------------------------------------------------------------------------------------
# Deciding what to do
# ----------------------------------------------------------------------------------------------------


def outputs_in_place(plan: Plan, stage: str) -> bool:
    """Whether a stage's own outputs exist and match its config (beyond what its record says)."""
    d = plan.stage_dir(stage)
    if stage == "data":
        return (d / "peakclips.jsonl").is_file() and plan.tasks_file("sft1", "train").is_file()
    if stage in TRAIN_STAGES:
        from stages.manifest import config_hash, read_manifest

        manifest = read_manifest(d / "final")
        return manifest is not None and manifest.config_hash == config_hash(plan.configs[stage].model_dump(mode="json"))
    if stage == "select":
        return (d / "selections.jsonl").is_file() and plan.questions_file.is_file()
    if stage == "eval":
        return (d / "summary.json").is_file()
    raise ConfigError(f"unknown stage {stage!r}")


Action = Literal["skip", "resume", "start"]


def decide(plan: Plan, stage: str, *, force: bool = False) -> tuple[Action, str]:
    """What to do with a stage, and why (shown to the user)."""
    record = plan.read_record(stage)
    key = plan.keys[stage]
    if force:
        return "start", "--force"
    if record is None:
        return "start", "no earlier run"
    if record.key != key:
        return "start", "its config or an upstream stage changed"
    if record.status == "done":
        if outputs_in_place(plan, stage):
            return "skip", f"done {record.finished_at}"
        return "start", "its outputs are missing or do not match"
    return "resume", f"interrupted (attempt {record.attempts})"


def select_stages(plan: Plan, from_stage: str | None = None, only: Sequence[str] | None = None) -> list[str]:
    stages = plan.stages
    for name in [from_stage, *(only or [])]:
        if name is not None and name not in stages:
            raise ConfigError(f"unknown stage {name!r}; this pipeline has {', '.join(stages)}")
    if from_stage is not None:
        stages = stages[stages.index(from_stage) :]
    if only:
        stages = [s for s in stages if s in only]
    return stages


# ----------------------------------------------------------------------------------------------------
# Running the stages
# ----------------------------------------------------------------------------------------------------


# What each stage writes into its folder: all it ever removes when it starts over. Anything else found there is
# someone else's, and the stage refuses to start rather than delete it.
STAGE_OUTPUTS: dict[str, frozenset[str]] = {
    "data": frozenset({"videos", "failed", "peakclips.jsonl", "summary.json", "tasks", "llm_cache"}),
    "select": frozenset({"selections.jsonl", "questions.jsonl", SHARDS_DIR}),
    "eval": frozenset({"run.json", "results.jsonl", "analyses.jsonl", "summary.json", "report.md",
                       "accuracy_vs_k.png", "questions.jsonl", SHARDS_DIR}),
}


def _ours(stage: str, name: str) -> bool:
    return name in STAGE_OUTPUTS[stage] or name == RECORD_NAME or name.startswith(".kframes.lock") or (
        name.startswith(".") and name.endswith(".tmp")  # a killed atomic write
    )


def _clear_dir(stage: str, path: Path, keep: Sequence[str] = ()) -> None:
    """Start a stage over: remove what the stage wrote in its folder (but `keep`, e.g. an answer cache).

    A folder holding anything the stage does not write is refused, not emptied: it is the user's.
    """
    if not path.is_dir():
        return
    foreign = sorted(child.name for child in path.iterdir() if not _ours(stage, child.name))
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ConfigError(
            f"{path}: the {stage} stage would start over here, but the folder holds files it did not write "
            f"({shown}); move them away or choose another output_dir"
        )
    for child in path.iterdir():
        if child.name in keep or child.name == RECORD_NAME or child.name.startswith(".kframes.lock"):
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def clear_stage(plan: Plan, stage: str) -> None:
    """Remove what a stage wrote in its folder before it starts over (the data stage keeps its LLM answers)."""
    _clear_dir(stage, plan.stage_dir(stage), keep=("llm_cache",) if stage == "data" else ())


def prepare_data(plan: Plan) -> Any:
    """The data config, after writing the sample videos it reads (if the pipeline generates them)."""
    cfg = plan.configs["data"]
    if plan.pipe.samples is not None:
        from pipeline.orchestration.samples import write_samples

        write_samples(plan.samples_dir, plan.pipe.samples)
    if not cfg.videos_dir:
        raise ConfigError(f"{plan.pipe.stages.data}: videos_dir: the data stage needs a videos folder")
    return cfg


def _run_data(plan: Plan, fresh: bool) -> tuple[dict[str, str], dict[str, Any]]:
    out = plan.stage_dir("data")
    if fresh:
        clear_stage(plan, "data")
    cfg = prepare_data(plan)
    built = build_peakclips(cfg, videos_dir=cfg.videos_dir, out_dir=out)
    return data_stage_result(built, out)


def data_stage_result(built: Any, out: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """The data stage's outputs and summary from a finished build (or merge); an unsettled build is an error."""
    failed = "; ".join(f"{v}: {e}" for v, e in list(built.failed.items())[:3])
    if not built.complete:
        raise DataError(
            f"data stage: {len(built.failed)} video(s) failed and not every video is settled, so no task files were "
            f"written; rerun to retry them ({failed})"
        )
    if built.failed:
        logger.warning("data stage: %d bad video(s) left out (listed in %s): %s", len(built.failed),
                       out / "summary.json", failed)
    outputs = {"peakclips": str(out / "peakclips.jsonl"), "tasks": str(out / "tasks")}
    summary: dict[str, Any] = {**built.totals, "failed_videos": len(built.failed)}
    for stage, counts in (built.task_counts or {}).items():
        for split, n in (counts or {}).items():
            if split in ("train", "val"):
                summary[f"tasks/{stage}.{split}"] = n
    return outputs, summary


def _run_train(plan: Plan, stage: str, fresh: bool) -> tuple[dict[str, str], dict[str, Any]]:
    from stages.preemption import PreemptionCallback
    from stages.registry import train_stage

    final = train_stage(stage, plan.configs[stage], resume=not fresh, callbacks=[PreemptionCallback()])
    manifest = read_manifest(final)
    summary: dict[str, Any] = {}
    if manifest is not None:
        summary = {"global_step": manifest.global_step, **{k: v for k, v in manifest.metrics.items() if "loss" in k or
                   "reward" in k or k.startswith("train_runtime")}}
    return {"final": str(final)}, summary


def select_questions(plan: Plan) -> list[dict[str, Any]]:
    """The held-out questions the select stage answers (all of them; a shard takes its part)."""
    return heldout_questions(
        plan.pipe.select,
        samples_dir=plan.samples_dir if plan.pipe.samples is not None else None,
        grpo_val_tasks=plan.tasks_file("grpo", "val"),
    )


def _run_select(plan: Plan, fresh: bool) -> tuple[dict[str, str], dict[str, Any]]:
    out = plan.stage_dir("select")
    if fresh:
        _clear_dir("select", out)
    questions = select_questions(plan)
    return run_select_stage(
        plan.pipe.select,
        questions,
        out=out,
        questions_file=plan.questions_file,
        model_dir=plan.stage_dir("grpo") / "final",
        frames=plan.configs["grpo"].frames,
    )


def _run_eval(plan: Plan, fresh: bool) -> tuple[dict[str, str], dict[str, Any]]:
    out = plan.stage_dir("eval")
    if fresh:
        _clear_dir("eval", out)
    return eval_stage_result(evaluate(plan.configs["eval"]), out)


def eval_stage_result(summary: dict[str, Any], out: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """The eval stage's outputs and the few numbers its record keeps, from the evaluation's summary."""
    short = {  # pipeline.evaluation.report.summarize: selectors -> k -> {accuracy, n, cost, ...}
        f"accuracy/{sel}/k{k}": cell.get("accuracy")
        for sel, by_k in (summary.get("selectors") or {}).items()
        for k, cell in by_k.items()
    }
    return {"summary": str(out / "summary.json"), "report": str(out / "report.md")}, short


def _is_main_process() -> bool:
    """Rank 0 under `accelerate launch` (which sets RANK), or the only process."""
    return int(os.environ.get("RANK", "0")) == 0


def _barrier() -> None:
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@dataclass
class StageOutcome:
    stage: str
    action: Action
    reason: str
    seconds: float | None = None
    record: StageRecord | None = None

    def describe(self) -> str:
        """One progress line: `sft2    resumed      12.3s  (interrupted (attempt 1))`."""
        took = f"{self.seconds:.1f}s" if self.seconds is not None else "-"
        verb = {"skip": "skipped", "resume": "resumed", "start": "ran"}[self.action]
        return f"{self.stage:<7} {verb:<8} {took:>9}  ({self.reason})"


def check_upstream(plan: Plan, stage: str) -> None:
    """The stages a stage reads must be done: a ConfigError naming the first that is not."""
    for up in UPSTREAM[stage]:
        if up == "data" and stage == "select" and plan.pipe.select.questions:
            continue
        rec = plan.read_record(up)
        if rec is None or rec.status != "done":
            raise ConfigError(
                f"stage {stage} reads {up}'s output ({plan.stage_dir(up)}), but {up} has not finished; run it first "
                f"(`kframes run --config {plan.source} --from {up}`)"
            )
        if rec.key != plan.keys[up]:
            logger.warning("%s is out of date with its config (its record has another key); %s uses it as is", up, stage)


def run_stage(plan: Plan, stage: str, *, force: bool = False) -> StageOutcome:
    """Run (or skip, or resume) one stage, keeping its record up to date. The upstream must be done."""
    if stage in TRAIN_STAGES:
        from accelerate import PartialState

        PartialState()  # joins the process group under `accelerate launch`, so that the ranks agree below
    check_upstream(plan, stage)

    action, reason = decide(plan, stage, force=force)
    if action == "skip":
        return StageOutcome(stage, action, reason, record=plan.read_record(stage))

    previous = plan.read_record(stage)
    _barrier()  # every rank decided from the same record before the main process rewrites it
    attempts = previous.attempts + 1 if action == "resume" and previous else 1
    total = previous.seconds_total if action == "resume" and previous else 0.0
    record = StageRecord(
        stage=stage,
        key=plan.keys[stage],
        status="running",
        upstream={u: plan.keys[u] for u in UPSTREAM[stage]},
        config=plan.configs[stage].model_dump(mode="json"),
        attempts=attempts,
        started_at=_now(),
        seconds_total=total,
    )
    if _is_main_process():
        plan.stage_dir(stage).mkdir(parents=True, exist_ok=True)
        plan.write_record(record)
    logger.info("stage %s: %s (%s)", stage, action, reason)

    fresh = action == "start"
    t0 = time.perf_counter()
    runners: dict[str, Callable[[], tuple[dict[str, str], dict[str, Any]]]] = {
        "data": lambda: _run_data(plan, fresh),
        "sft1": lambda: _run_train(plan, "sft1", fresh),
        "sft2": lambda: _run_train(plan, "sft2", fresh),
        "grpo": lambda: _run_train(plan, "grpo", fresh),
        "select": lambda: _run_select(plan, fresh),
        "eval": lambda: _run_eval(plan, fresh),
    }
    try:
        outputs, summary = runners[stage]()
    finally:
        elapsed = time.perf_counter() - t0
        record.seconds_total = total + elapsed
        if _is_main_process() and record.status == "running":
            plan.write_record(record)  # keeps the time spent by an attempt that failed or was preempted
    record.status = "done"
    record.outputs = outputs
    record.summary = summary
    record.finished_at = _now()
    record.seconds = elapsed
    if _is_main_process():
        plan.write_record(record)
    _barrier()
    return StageOutcome(stage, action, reason, seconds=elapsed, record=record)


def run_pipeline(
    plan: Plan,
    *,
    from_stage: str | None = None,
    only: Sequence[str] | None = None,
    force: bool = False,
    on_outcome: Callable[[StageOutcome], None] | None = None,
) -> list[StageOutcome]:
    """Run the selected stages in order; `force` starts each selected stage over even when it is done.

    The pipeline's folder is locked for the run (by the main process): a second `kframes run` on it fails at once
    with the first one's pid and host, instead of training into the same checkpoints.
    """
    outcomes = []
    stages = select_stages(plan, from_stage, only)
    with OutputLock(plan.root) if _is_main_process() else contextlib.nullcontext():
        for stage in stages:
            outcome = run_stage(plan, stage, force=force)
            outcomes.append(outcome)
            if on_outcome is not None:
                on_outcome(outcome)
    return outcomes


def format_status(plan: Plan) -> str:
    """One line per stage: its state against the current configs (what `kframes run --status` prints)."""
    lines = [f"{'stage':<8} {'state':<8} {'time':>9}  why / output"]
    for stage in plan.stages:
        action, reason = decide(plan, stage)
        rec = plan.read_record(stage)
        state = {"skip": "done", "resume": "partial", "start": "todo"}[action]
        secs = f"{rec.seconds_total:8.1f}s" if rec else f"{'-':>9}"
        lines.append(f"{stage:<8} {state:<8} {secs}  {reason}")
    return "\n".join(lines)
