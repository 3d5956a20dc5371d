"""`kframes demo`: the curriculum on generated videos, measured on held-out ones, in minutes on a CPU.

The demo runs a pipeline config (`configs/pipeline/demo.yaml`: sample videos whose scenes each have a distinct
background colour and shape, PeakClips from their captions with the model-free lexical relevance scorer, SFT1 ->
SFT2 -> GRPO on the demo selector `pipeline.core.models.DEMO_RECIPE`, frame selection for the questions of
held-out videos), then:

- trains the ablation the paper reports, SFT2 alone (the SFT2 recipe from the untrained model), into
  `<out>/ablation/sft2_only`, and lets it and the SFT1 -> SFT2 model select frames for the same held-out questions
  as the full curriculum (the pipeline's select stage);
- measures each against uniform sampling at the same k (pipeline.orchestration.demo_measure): frame hit rate,
  scene recall, fallback rate, and the accuracy of a downstream reader that sees only the chosen frames
  (data_builder.scene_oracle);
- writes `<out>/report.md` (tables, targets met or not, stage times, contact sheets), `<out>/learning_curves.png`
  (SFT losses, GRPO rewards), `<out>/demo_results.json` and `<out>/hit_rates.json`.

The selector writes its JSON itself (no constrained decoding); parsing, sampling and the reward are the code users
run. GRPO's downstream model is the same reader: the reward `oracle_logprob` registered here is
`rewards.downstream.DownstreamLogprobReward` with the reader as its backend (the tiny MLLM that could be built
locally has random weights, so its answers would carry no reward). A rerun skips what is done (same rules as
`kframes run`) and measures again.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from data_builder.scene_oracle import SceneOracle
from data_builder.video import FrameCache
from pipeline.core.contracts import KeyClip
from pipeline.core.errors import ConfigError
from pipeline.core.io import atomic_write_json, atomic_write_text, iter_jsonl
from pipeline.inference.contact_sheet import clips_summary, priorities_from_allocations, write_contact_sheet
from pipeline.orchestration.demo_measure import DownstreamJudge, measure, span_hits, uniform_times
from pipeline.orchestration.demo_report import log_history, plot_learning_curves, render_report
from pipeline.orchestration.orchestrate import Plan, load_pipeline, run_pipeline
from pipeline.orchestration.select_stage import SELECTIONS_FILE, heldout_questions, run_select_stage
from rewards.context import RewardContext
from rewards.downstream import DownstreamLogprobReward
from rewards.registry import REWARDS

__all__ = ["DEFAULT_CONFIG", "ORACLE_REWARD", "run_demo", "span_hits", "uniform_times"]

DEFAULT_CONFIG = "configs/pipeline/demo.yaml"
ABLATION_DIR = "ablation"
ORACLE_REWARD = "oracle_logprob"


def make_oracle_reward(ctx: RewardContext) -> DownstreamLogprobReward:
    """The downstream log-prob reward with the generated world's reader (SceneOracle) as the downstream model."""
    return DownstreamLogprobReward(RewardContext(cfg=ctx.cfg, backend=SceneOracle(), max_videos=ctx.max_videos))


# A reward by name for GRPO recipes (`reward.weights: {oracle_logprob: 1.0, ...}`); every `kframes` command imports
# this module, so `kframes run` and `kframes train grpo` resolve the name as the demo does.
REWARDS.setdefault(ORACLE_REWARD, make_oracle_reward)


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def train_sft2_only(plan: Plan, *, force: bool = False) -> tuple[Path, bool, float]:
    """SFT2's recipe from the untrained model (no SFT1): (final folder, whether it trained now, seconds).

    The run is keyed like any stage (stages.common.run_trainer): a finished one with the same config and data is
    kept, an interrupted one resumed; one of another config or data (the demo's own folder) is trained again from
    the start."""
    from stages.checkpoints import foreign_checkpoints
    from stages.common import run_key
    from stages.manifest import config_hash, data_fingerprint, read_manifest
    from stages.registry import train_stage

    base = plan.configs["sft2"]
    cfg = type(base).model_validate(
        {**base.model_dump(), "init_from": None, "output_dir": str(plan.root / ABLATION_DIR / "sft2_only")}
    )
    final = Path(cfg.output_dir) / "final"
    done = read_manifest(final)
    files = {"train": cfg.data.train_file, "eval": cfg.data.eval_file}
    config, fingerprint = cfg.model_dump(mode="json"), data_fingerprint(files)
    fresh = force or done is None or done.config_hash != config_hash(config) or done.data_fingerprint != fingerprint
    stale = (done is not None and fresh) or bool(foreign_checkpoints(cfg.output_dir, run_key(config, fingerprint, None)))
    t0 = time.perf_counter()
    final = train_stage("sft2", cfg, resume=not (force or stale))
    return final, fresh, time.perf_counter() - t0


def select_with(plan: Plan, name: str, model_dir: Path, questions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Frames for every held-out question from the selector in `model_dir`, journaled under `<out>/ablation/<name>`.

    The journal is keyed by the model's manifest, the select settings and the questions: when any of them changes,
    the previous selections (written here, by this function) are discarded."""
    from stages.manifest import read_manifest

    out = plan.root / ABLATION_DIR / name / "select"
    manifest = read_manifest(model_dir)
    key = _sha(
        {
            "model": None if manifest is None else [manifest.config_hash, manifest.data_fingerprint, manifest.global_step],
            "select": plan.pipe.select.model_dump(mode="json"),
            "questions": questions,
        }
    )
    key_file = out / "key.json"
    if key_file.is_file() and json.loads(key_file.read_text()).get("key") != key:
        for stale in (SELECTIONS_FILE, "questions.jsonl", "key.json"):
            (out / stale).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(key_file, {"key": key, "model": str(model_dir)})
    run_select_stage(
        plan.pipe.select,
        questions,
        out=out,
        questions_file=out / "questions.jsonl",
        model_dir=model_dir,
        frames=plan.configs["grpo"].frames,
    )
    return [obj for _, obj in iter_jsonl(out / SELECTIONS_FILE)]


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


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k != "rows"}


def run_demo(
    out: str | Path = "demo_out", *, config: str = DEFAULT_CONFIG, force: bool = False, overrides: Sequence[str] = ()
) -> Path:
    """Run the demo pipeline and its ablation into `out`, measure them, write `out/report.md`; returns its path.

    `overrides` are `kframes run --set` items (`sft2:train.max_steps=8`), applied after `output_dir=out`."""
    t0 = time.perf_counter()
    plan = load_pipeline(config, [f"output_dir={out}", *overrides])
    if plan.pipe.samples is None:
        raise ConfigError(f"{config}: the demo needs a `samples` section (it scores frames against known scenes)")

    def show(line: str) -> None:
        print(f"[kframes demo] {line}", flush=True)

    run_pipeline(plan, force=force, on_outcome=lambda outcome: show(outcome.describe()))
    sft2_only, trained, secs = train_sft2_only(plan, force=force)
    show(f"{'sft2 alone':<7} {'ran' if trained else 'skipped':<8} {secs:>8.1f}s  (ablation: SFT2 without SFT1)")

    questions = heldout_questions(
        plan.pipe.select, samples_dir=plan.samples_dir, grpo_val_tasks=plan.tasks_file("grpo", "val")
    )
    judge = DownstreamJudge(max_pixels=plan.configs["grpo"].reward.downstream.max_pixels)
    t1 = time.perf_counter()
    full = [obj for _, obj in iter_jsonl(plan.stage_dir("select") / SELECTIONS_FILE)]
    rows = [
        ("SFT2 only", select_with(plan, "sft2_only", sft2_only, questions)),
        ("SFT1 + SFT2", select_with(plan, "sft1_sft2", plan.stage_dir("sft2") / "final", questions)),
        ("SFT1 + SFT2 + GRPO", full),
    ]
    ablation = [(label, measure(sel, judge)) for label, sel in rows]
    headline = ablation[-1][1]
    show(f"{'measure':<7} {'ran':<8} {time.perf_counter() - t1:>8.1f}s  ({len(questions)} held-out questions)")

    root = Path(out)
    reward_names = list(plan.configs["grpo"].reward.weights)
    curves = plot_learning_curves(
        root / "learning_curves.png",
        {
            "SFT1": log_history(plan.stage_dir("sft1")),
            "SFT2 after SFT1": log_history(plan.stage_dir("sft2")),
            "SFT2 alone": log_history(sft2_only.parent),
        },
        log_history(plan.stage_dir("grpo")),
        ["reward", *(f"rewards/{n}/mean" for n in reward_names)],
    )
    sheets = write_sheets(full, root)
    atomic_write_json(root / "hit_rates.json", headline)
    atomic_write_json(
        root / "demo_results.json",
        {"k": plan.pipe.select.k, "headline": _summary(headline),
         "ablation": [{"training": label, **_summary(res)} for label, res in ablation]},
    )
    extra = [("sft2 alone", "done", secs if trained else None, str(sft2_only.relative_to(root)))]
    report = root / "report.md"
    atomic_write_text(
        report,
        render_report(plan, ablation=ablation, headline=headline, curves=curves, sheets=sheets, extra_stages=extra,
                      total_s=time.perf_counter() - t0),
    )
    return report
