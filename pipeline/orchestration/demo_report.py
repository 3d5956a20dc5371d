"""The demo's report: `<out>/report.md` with its tables, and the learning curves as `<out>/learning_curves.png`.

Numbers come from `pipeline.orchestration.demo_measure` (held-out questions) and the training stages' logs (the
`log_history` the trainer keeps in each checkpoint's trainer_state.json); nothing here computes a result.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

from pipeline.core.io import atomic_write_bytes

# The targets of the demo: the selector must write valid clips, find the evidence and help the downstream model.
MAX_FALLBACK = 0.10
MIN_HIT_RATIO = 2.0


def log_history(stage_dir: str | Path) -> list[dict[str, Any]]:
    """The training log of a stage folder: the newest checkpoint's trainer_state.json `log_history` ([] if none)."""
    from stages.checkpoints import list_checkpoints  # transformers: not on the CLI's import path

    for ckpt in reversed(list_checkpoints(stage_dir)):
        state = ckpt / "trainer_state.json"
        if state.is_file():
            try:
                return list(json.loads(state.read_text()).get("log_history") or [])
            except ValueError:
                continue
    return []


def series(history: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for entry in history:
        if key in entry and "step" in entry and isinstance(entry[key], (int, float)):
            steps.append(int(entry["step"]))
            values.append(float(entry[key]))
    return steps, values


def plot_learning_curves(
    path: Path, losses: dict[str, list[dict[str, Any]]], rewards: list[dict[str, Any]], reward_keys: Sequence[str]
) -> Path | None:
    """Two panels: the SFT losses per step (one line per run) and the GRPO rewards per step. None if no data."""
    if not any(series(h, "loss")[0] for h in losses.values()) and not rewards:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_l, ax_r) = plt.subplots(1, 2, figsize=(11, 4))
    for label, history in losses.items():
        x, y = series(history, "loss")
        if x:
            ax_l.plot(x, y, marker=".", label=label)
    ax_l.set(xlabel="step", ylabel="training loss (answer tokens)", title="SFT", yscale="log")
    ax_l.grid(alpha=0.3)
    ax_l.legend()
    for key in reward_keys:
        x, y = series(rewards, key)
        if x:
            ax_r.plot(x, y, marker=".", label=key)
    ax_r.set(xlabel="step", ylabel="mean reward of the sampled completions", title="GRPO")
    ax_r.grid(alpha=0.3)
    if ax_r.lines:
        ax_r.legend()
    fig.tight_layout()
    buf = BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def targets(result: dict[str, Any]) -> list[tuple[str, bool | None, str]]:
    """(target, met?, measured) for the headline selector; met is None when it could not be measured."""
    fb, hit, uhit = result["fallback_rate"], result["selector_frame_hit_rate"], result["uniform_frame_hit_rate"]
    acc, uacc = result.get("selector_accuracy"), result.get("uniform_accuracy")
    ratio = (hit / uhit) if hit is not None and uhit else None
    return [
        (f"fallback at most {MAX_FALLBACK:.0%}", None if fb is None else fb <= MAX_FALLBACK, _pct(fb)),
        (
            f"frame hit rate at least {MIN_HIT_RATIO:g}x uniform's",
            None if ratio is None else ratio >= MIN_HIT_RATIO,
            "-" if ratio is None else f"{_pct(hit)} vs {_pct(uhit)} ({ratio:.1f}x)",
        ),
        (
            "downstream accuracy above uniform's",
            None if acc is None or uacc is None else acc > uacc,
            f"{_pct(acc)} vs {_pct(uacc)}",
        ),
    ]


def _mark(ok: bool | None) -> str:
    return {True: "met", False: "**not met**", None: "not measured"}[ok]


def _world(samples: Any) -> str:
    """What the questions ask, in the words of the report."""
    if samples.queries == "landmark":
        return (f"one scene of every video, wherever it falls, is on a {samples.landmark_color} background, and the "
                f"question asks for its shape (\"What shape is shown on the {samples.landmark_color} background?\"), "
                "so the answer is visible in that scene only.")
    return "a question names a scene's colour and asks for its shape, so the answer is visible in that scene only."


def render_report(
    plan: Any,
    *,
    ablation: list[tuple[str, dict[str, Any]]],
    headline: dict[str, Any],
    curves: Path | None,
    sheets: Sequence[Path],
    extra_stages: Sequence[tuple[str, str, float | None, str]],
    total_s: float,
) -> str:
    """The report's markdown. `ablation` is [(row label, measure() result)], the last row being the full curriculum;
    `headline` the measured result of the pipeline's own selector (its select stage)."""
    out = plan.root
    samples = plan.pipe.samples
    k = plan.pipe.select.k
    lines = [
        "# kframes demo",
        "",
        (
            f"The K-frames curriculum (SFT1 -> SFT2 -> GRPO) trained a small Qwen2.5-VL, built locally with random "
            f"weights, on {samples.train_videos} generated videos, and was measured on {samples.heldout_videos} "
            f"held-out generated videos it never saw ({headline['questions']} questions). Each scene of a video has "
            f"its own background colour and shape; {_world(samples)}"
        ),
        "",
        f"## Held-out questions: selector vs. uniform sampling (k = {k})",
        "",
        "| frames from | frame hit rate | scene recall | fallback | downstream accuracy |",
        "|---|---:|---:|---:|---:|",
        (
            f"| K-frames selector | {_pct(headline['selector_frame_hit_rate'])} | "
            f"{_pct(headline['selector_scene_recall'])} | {_pct(headline['fallback_rate'])} | "
            f"{_pct(headline.get('selector_accuracy'))} |"
        ),
        (
            f"| uniform | {_pct(headline['uniform_frame_hit_rate'])} | {_pct(headline['uniform_scene_recall'])} | - | "
            f"{_pct(headline.get('uniform_accuracy'))} |"
        ),
        "",
        (
            "Frame hit rate: share of the k frames inside the scene that answers the question. Scene recall: share "
            "of questions whose answer scene got at least one frame. Fallback: the selector's output held no valid "
            "clip (`pipeline.core.prompt.parse_clips`, no constrained decoding), so the sampler used uniform frames. "
            "Downstream accuracy: share of questions answered right by a reader of the generated frames "
            "(`data_builder.scene_oracle`) that sees only the k frames; it also gives GRPO its reward."
        ),
        "",
        "| target | result | measured |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {_mark(ok)} | {measured} |" for name, ok, measured in targets(headline)]
    lines += [
        "",
        "## Ablation: the curriculum, stage by stage (same held-out questions)",
        "",
        "| training | frame hit rate | scene recall | fallback | downstream accuracy |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, res in ablation:
        lines.append(
            f"| {label} | {_pct(res['selector_frame_hit_rate'])} | {_pct(res['selector_scene_recall'])} | "
            f"{_pct(res['fallback_rate'])} | {_pct(res.get('selector_accuracy'))} |"
        )
    if ablation:
        base = ablation[-1][1]
        lines.append(
            f"| uniform frames (no selector) | {_pct(base['uniform_frame_hit_rate'])} | "
            f"{_pct(base['uniform_scene_recall'])} | - | {_pct(base.get('uniform_accuracy'))} |"
        )
    lines += [
        "",
        "SFT2 only: the SFT2 recipe started from the untrained model instead of SFT1's; the other rows are the "
        "pipeline's own SFT2 and GRPO models.",
        "",
    ]
    if curves is not None:
        lines += ["## Learning curves", "", f"![learning curves]({curves.relative_to(out)})", ""]
    lines += ["## Stages", "", "| stage | state | time | output |", "|---|---|---:|---|"]
    for stage in plan.stages:
        rec = plan.read_record(stage)
        if rec is None:
            lines.append(f"| {stage} | not run | - | - |")
            continue
        secs = rec.seconds if rec.seconds is not None else rec.seconds_total
        main = Path(next(iter(rec.outputs.values()), "-"))
        shown = main.relative_to(out) if main.is_relative_to(out) else main
        lines.append(f"| {stage} | {rec.status} | {secs:.1f}s | `{shown}` |")
    for name, state, secs, where in extra_stages:
        lines.append(f"| {name} | {state} | {'-' if secs is None else f'{secs:.1f}s'} | `{where}` |")
    lines += [
        "",
        f"Wall time of this invocation: {total_s:.1f}s (a rerun skips what is done and only remeasures).",
        "",
        "| question | answer scene | selector hits | uniform hits | predicted clips |",
        "|---|---|---:|---:|---|",
    ]
    for r in headline["rows"]:
        clips = ", ".join(f"{c['priority']} {c['start_s']:.1f}-{c['end_s']:.1f}s" for c in r["clips"]) or "none"
        lines.append(
            f"| {r['question']} | {r['span'][0]:.1f}-{r['span'][1]:.1f}s | {_pct(r['selector_frac'])} | "
            f"{_pct(r['uniform_frac'])} | {clips}{' (fallback)' if r['fallback'] else ''} |"
        )
    if sheets:
        lines += ["", "## Contact sheets", ""]
        for p in sheets:
            lines += [f"![{p.stem}]({p.relative_to(out)})", ""]
    return "\n".join(lines) + "\n"
