"""The pipeline's select stage: the trained selector picks k frames for every held-out question.

Held-out questions come from (first that applies) the pipeline's `select.questions` file, the sample videos'
held-out queries (`<output_dir>/samples/heldout.jsonl`, with each answer's true time span), or the GRPO
validation tasks the data stage wrote (videos never trained on). They are written once as
`<output_dir>/select/questions.jsonl` (EvalQuestion lines, which the eval stage reads), and each selection is
one line of `selections.jsonl`, appended as soon as it exists, so a killed stage resumes where it stopped.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipeline.core.config import FramesSection, PipelineSelectSection
from pipeline.core.contracts import EvalQuestion
from pipeline.core.errors import DataError
from pipeline.core.io import Journal, atomic_write_jsonl, iter_jsonl
from pipeline.evaluation.benchmarks import load_questions
from pipeline.evaluation.shards import shard_by_video, shard_dir
from pipeline.inference.selector import Selector, effective_sampler, select_frames, trained_sampler

SELECTIONS_FILE = "selections.jsonl"
# what each selections.jsonl line keeps of a pipeline.inference.selector.SelectionResult (besides the question)
_KEEP = ("k", "clips", "parse_error", "indices", "timestamps_s", "fallback", "fallback_reason", "allocations",
         "timings", "raw", "generation")
HELDOUT_FILE = "heldout.jsonl"
DEFAULT_K = 8  # frames per question when neither the pipeline nor the trained model says


def heldout_questions(
    select: PipelineSelectSection, *, samples_dir: Path | None, grpo_val_tasks: Path
) -> list[dict[str, Any]]:
    """The held-out questions as dicts with EvalQuestion's fields, plus `answer_span_s` where it is known.

    From (first that applies) `select.questions`, the sample videos' held-out queries in `samples_dir`, or the
    GRPO validation tasks.
    """
    if select.questions:
        qs = [q.model_dump(mode="json") for q in load_questions("jsonl", select.questions, check_videos=True)]
    elif samples_dir is not None:
        qs = [obj for _, obj in iter_jsonl(samples_dir / HELDOUT_FILE)]
    else:
        path = grpo_val_tasks
        qs = []
        for lineno, obj in iter_jsonl(path):
            missing = [k for k in ("id", "video", "question", "options", "answer") if k not in obj]
            if missing:
                raise DataError(f"{path}:{lineno}: a GRPO task needs {', '.join(missing)} to be asked again")
            qs.append({"question_id": obj["id"], "video": obj["video"], "question": obj["question"],
                       "options": obj["options"], "answer": obj["answer"], "task_type": obj.get("task", "grpo.mcq")})
    if select.limit:
        qs = qs[: select.limit]
    if not qs:
        raise DataError("select stage: no held-out questions (set select.questions in the pipeline config)")
    return qs


def run_select_stage(
    sel_cfg: PipelineSelectSection,
    questions: list[dict[str, Any]],
    *,
    out: Path,
    questions_file: Path,
    model_dir: Path,
    frames: FramesSection,
) -> tuple[dict[str, str], dict[str, Any]]:
    """Select frames for every question with the selector in `model_dir`, journaled in `out`; the questions are
    written to `questions_file` for the eval stage. Returns (outputs, summary)."""
    out.mkdir(parents=True, exist_ok=True)
    write_questions(questions_file, questions)
    # What the reward optimised is what is selected with: the trained model's sampler settings and k, unless set here.
    sampler, source = effective_sampler(sel_cfg, model_dir)
    k = sel_cfg.k or trained_sampler(model_dir).get("k") or DEFAULT_K
    journal = Journal(out / SELECTIONS_FILE, ("question_id",))
    todo = [q for q in questions if journal.get(q["question_id"]) is None]
    selector = None
    for q in tqdm(todo, desc="select", unit="q"):
        if selector is None:
            t0 = time.perf_counter()
            selector = Selector.from_pretrained(
                model_dir,
                num_candidates=sel_cfg.num_candidates or frames.num_candidates,
                max_pixels=sel_cfg.max_pixels or frames.max_pixels,
                device="auto",
            )
            load_s = time.perf_counter() - t0
        res = select_frames(
            selector, q["video"], q["question"], k, mode=sampler.mode, options=q.get("options"),
            max_new_tokens=sel_cfg.max_new_tokens, **sampler.sampler_kwargs(),
        )
        sel = res.to_dict()
        journal.add({**q, **{key: sel[key] for key in _KEEP}, "mode": sampler.mode, "sampler_mode": res.mode,
                     "sampler": {**sampler.sampler_settings(), "source": source}})
    summary = selection_summary([journal.get(q["question_id"]) for q in questions])
    if selector is not None:
        summary["model_load_s"] = load_s
    return {"selections": str(out / SELECTIONS_FILE), "questions": str(questions_file)}, summary


def merge_select_shards(
    questions: list[dict[str, Any]], *, out: Path, questions_file: Path, shards: int
) -> tuple[dict[str, str], dict[str, Any]]:
    """Join the selections of `shards` shards (`<out>/shards/<i>-of-<N>/`, each run by `run_select_stage` on its
    `shard_by_video` part) into `<out>/selections.jsonl` in question order, and write `questions_file`: what one
    process selecting every question writes. A selection missing from its shard is an error naming the shard."""
    owner = {q["question_id"]: i for i in range(shards)
             for q in shard_by_video(questions, i, shards, video=lambda q: q["video"])}
    journals = [Journal(shard_dir(out, i, shards) / SELECTIONS_FILE, ("question_id",)) for i in range(shards)]
    main = Journal(out / SELECTIONS_FILE, ("question_id",))
    records, new, missing = [], [], []
    for q in questions:
        rec = main.get(q["question_id"])
        if rec is None:
            rec = journals[owner[q["question_id"]]].get(q["question_id"])
            if rec is None:
                missing.append(f"{shard_dir(out, owner[q['question_id']], shards).name}: {q['question_id']}")
                continue
            new.append(rec)
        records.append(rec)
    if missing:
        raise DataError(
            f"{len(missing)} selection(s) missing from the shards of {out} (first: {missing[0]}); their array tasks "
            "did not finish: rerun them (each resumes where it stopped), then merge again"
        )
    write_questions(questions_file, questions)
    atomic_write_jsonl(out / SELECTIONS_FILE, [*main.records.values(), *new])
    return {"selections": str(out / SELECTIONS_FILE), "questions": str(questions_file)}, selection_summary(records)


def write_questions(questions_file: Path, questions: list[dict[str, Any]]) -> None:
    """The questions as EvalQuestion lines, which the eval stage reads."""
    eval_fields = set(EvalQuestion.model_fields)
    atomic_write_jsonl(
        questions_file,
        [EvalQuestion.model_validate({k: v for k, v in q.items() if k in eval_fields}) for q in questions],
    )


def selection_summary(records: list[dict[str, Any] | None]) -> dict[str, Any]:
    """What the stage record keeps of the selections: how many, how often the sampler fell back to uniform, and the
    k and sampler settings they were selected with."""
    summary: dict[str, Any] = {
        "questions": len(records),
        "fallback_rate": sum(bool(r and r["fallback"]) for r in records) / max(1, len(records)),
    }
    first = next((r for r in records if r), None)
    if first is not None and "sampler" in first:
        summary["k"] = first["k"]
        summary["sampler"] = {key: v for key, v in first["sampler"].items() if key != "source"}
    return summary
