"""`kframes demo`: the whole pipeline on generated videos with a tiny local model, and a report on what it did.

The demo runs `configs/pipeline/demo.yaml` (sample videos of distinct coloured-shape scenes, PeakClips from
their captions with the model-free lexical relevance scorer, SFT1 -> SFT2 -> GRPO for a few steps on the tiny
Qwen2.5-VL, frame selection for queries of held-out videos, evaluation) and writes `<out>/report.md`:

- each stage's wall time (from the pipeline's stage records);
- the selector's **hit rate** on the held-out queries against uniform sampling with the same k: the fraction
  of chosen frames that fall inside the scene that answers the query, and the fraction of queries whose
  answer scene got at least one frame (the generator knows each answer's true time span);
- a contact sheet of the frames chosen for each held-out query, with their timestamps and clip priorities.

The tiny model has random weights and trains for seconds, so its numbers say that the machinery runs end
to end, not that K-frames works; the report says so. A rerun skips the finished stages (same rules as
`kframes run`), so it only recomputes the report.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from data_builder.video import FrameCache, VideoReader, uniform_indices
from pipeline.core.contracts import KeyClip
from pipeline.core.io import atomic_write_json, atomic_write_text, iter_jsonl
from pipeline.inference.contact_sheet import clips_summary, priorities_from_allocations, write_contact_sheet
from pipeline.orchestration.orchestrate import load_pipeline, run_pipeline
from pipeline.orchestration.select_stage import SELECTIONS_FILE

DEFAULT_CONFIG = "configs/pipeline/demo.yaml"


def span_hits(times_s: Sequence[float], span: Sequence[float]) -> tuple[float, bool]:
    """(fraction of frames whose time lies in [start, end), whether at least one does)."""
    start, end = float(span[0]), float(span[1])
    inside = [start <= t < end for t in times_s]
    return (sum(inside) / len(inside) if inside else 0.0), any(inside)


def uniform_times(video: str, k: int) -> tuple[list[int], list[float]]:
    """The uniform baseline's frames and their presentation times (same decoder as the selector's)."""
    with VideoReader(video) as reader:
        idx = uniform_indices(reader.info.num_frames, k)
        return idx, [float(reader.timestamps_s[i]) for i in idx]


def hit_rates(selections: list[dict[str, Any]]) -> dict[str, Any]:
    """Per question and overall: the selector's frame hit rate and scene recall against uniform sampling."""
    rows = []
    for rec in selections:
        span = rec.get("answer_span_s")
        if not span:
            continue
        k = len(rec["indices"])
        _, u_times = uniform_times(rec["video"], k)
        sel_frac, sel_any = span_hits(rec["timestamps_s"], span)
        uni_frac, uni_any = span_hits(u_times, span)
        rows.append(
            {
                "question_id": rec["question_id"],
                "question": rec["question"],
                "span": span,
                "k": k,
                "selector_frac": sel_frac,
                "selector_hit": sel_any,
                "uniform_frac": uni_frac,
                "uniform_hit": uni_any,
                "fallback": bool(rec.get("fallback")),
                "clips": rec.get("clips") or [],
            }
        )
    n = len(rows)
    mean = lambda key: (sum(float(r[key]) for r in rows) / n) if n else None
    return {
        "questions": n,
        "selector_frame_hit_rate": mean("selector_frac"),
        "uniform_frame_hit_rate": mean("uniform_frac"),
        "selector_scene_recall": mean("selector_hit"),
        "uniform_scene_recall": mean("uniform_hit"),
        "fallback_rate": mean("fallback"),
        "rows": rows,
    }


def write_sheets(selections: list[dict[str, Any]], out_dir: Path, max_sheets: int = 6) -> list[Path]:
    """One contact sheet per held-out question (the first `max_sheets`): the chosen frames, labelled."""
    cache = FrameCache(max_videos=2)
    paths = []
    for rec in selections[:max_sheets]:
        clips = [KeyClip.model_validate(c) for c in rec.get("clips") or []]
        images = cache.images(rec["video"], rec["indices"])
        span = rec.get("answer_span_s")
        truth = f" | answer scene {span[0]:.1f}-{span[1]:.1f}s" if span else ""
        title = f"{rec['question']} | clips: {clips_summary(clips)}{truth}"
        path = out_dir / "sheets" / f"{rec['question_id']}.png"
        write_contact_sheet(
            path,
            images,
            rec["indices"],
            rec["timestamps_s"],
            clips,
            title=title,
            priorities=priorities_from_allocations(rec["indices"], rec.get("allocations") or []),
        )
        paths.append(path)
    return paths


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def render_report(plan: Any, hits: dict[str, Any], sheets: list[Path], total_s: float) -> str:
    out = plan.root
    lines = [
        "# kframes demo",
        "",
        (
            f"The whole K-frames pipeline ran on {plan.pipe.samples.train_videos} generated training videos and "
            f"{plan.pipe.samples.heldout_videos} held-out ones, with a tiny Qwen2.5-VL built locally (random "
            "weights, no downloads). Every number below measures the machinery, not K-frames: a random model "
            "trained for seconds has not learned to find scenes. With a real selector "
            "(configs/pipeline/qwen2_5_vl_3b.yaml) the same report is what to look at."
        ),
        "",
        "## Stages",
        "",
        "| stage | state | time | output |",
        "|---|---|---:|---|",
    ]
    for stage in plan.stages:
        rec = plan.read_record(stage)
        if rec is None:
            lines.append(f"| {stage} | not run | - | - |")
            continue
        secs = rec.seconds if rec.seconds is not None else rec.seconds_total
        main = Path(next(iter(rec.outputs.values()), "-"))
        shown = main.relative_to(out) if main.is_relative_to(out) else main
        lines.append(f"| {stage} | {rec.status} | {secs:.1f}s | `{shown}` |")
    lines += [
        "",
        f"Total wall time of this invocation: {total_s:.1f}s (finished stages are skipped on a rerun).",
        "",
        f"## Held-out queries: selector vs. uniform (k = {plan.pipe.select.k})",
        "",
        (
            "Frame hit rate: share of the chosen frames inside the scene that answers the query. Scene recall: "
            "share of queries whose answer scene got at least one frame. Fallback: the selector's output had no "
            "valid clip, so the sampler used uniform frames."
        ),
        "",
        "| frames from | frame hit rate | scene recall |",
        "|---|---:|---:|",
        f"| K-frames selector | {_pct(hits['selector_frame_hit_rate'])} | {_pct(hits['selector_scene_recall'])} |",
        f"| uniform | {_pct(hits['uniform_frame_hit_rate'])} | {_pct(hits['uniform_scene_recall'])} |",
        "",
        f"{hits['questions']} questions; selector fell back to uniform on {_pct(hits['fallback_rate'])} of them.",
        "",
        "| question | answer scene | selector hits | uniform hits | predicted clips |",
        "|---|---|---:|---:|---|",
    ]
    for r in hits["rows"]:
        clips = ", ".join(f"{c['priority']} {c['start_s']:.1f}-{c['end_s']:.1f}s" for c in r["clips"]) or "none"
        lines.append(
            f"| {r['question']} | {r['span'][0]:.1f}-{r['span'][1]:.1f}s | {_pct(r['selector_frac'])} | "
            f"{_pct(r['uniform_frac'])} | {clips}{' (fallback)' if r['fallback'] else ''} |"
        )
    if sheets:
        lines += ["", "## Contact sheets", ""]
        for p in sheets:
            rel = p.relative_to(out)
            lines += [f"![{p.stem}]({rel})", ""]
    eval_report = plan.stage_dir("eval") / "report.md"
    if eval_report.is_file():
        rel = eval_report.relative_to(out)
        lines += ["## Evaluation (downstream accuracy, tiny model)", "", f"See [{rel}]({rel}).", ""]
    return "\n".join(lines) + "\n"


def run_demo(
    out: str | Path = "demo_out", *, config: str = DEFAULT_CONFIG, force: bool = False, overrides: Sequence[str] = ()
) -> Path:
    """Run the demo pipeline into `out` and write `out/report.md`; returns the report's path.

    `overrides` are `kframes run --set` items (`sft2:train.max_steps=8`), applied after `output_dir=out`."""
    t0 = time.perf_counter()
    plan = load_pipeline(config, [f"output_dir={out}", *overrides])
    if plan.pipe.samples is None:
        from pipeline.core.errors import ConfigError

        raise ConfigError(f"{config}: the demo needs a `samples` section (it scores frames against known scenes)")

    def show(outcome) -> None:
        print(f"[kframes demo] {outcome.describe()}", flush=True)

    run_pipeline(plan, force=force, on_outcome=show)
    selections = [obj for _, obj in iter_jsonl(plan.stage_dir("select") / SELECTIONS_FILE)]
    hits = hit_rates(selections)
    root = Path(out)
    sheets = write_sheets(selections, root)
    atomic_write_json(root / "hit_rates.json", {k: v for k, v in hits.items()})
    report = root / "report.md"
    atomic_write_text(report, render_report(plan, hits, sheets, time.perf_counter() - t0))
    return report
