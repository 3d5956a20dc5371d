"""What an evaluation run reports: accuracy and cost per selector and k (summary.json), a Markdown table
(report.md) and the accuracy-vs-k plot (accuracy_vs_k.png).

Besides overall accuracy, each cell carries the breakdown its benchmark is reported with (`BREAKDOWNS`), so a
number can be set beside the benchmark's own leaderboard: Video-MME short/medium/long, LongVideoBench per
duration group, LVBench per category (a question with several categories counts in each, as LVBench's scorer
counts it), MLVU per task and M-Avg (the mean of its multiple-choice tasks' accuracies), NExT-QA causal,
temporal and descriptive.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipeline.core.config import DownstreamSection
from pipeline.core.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from pipeline.evaluation.benchmarks import LVB_DURATION_GROUPS, MLVU_TASK_DIRS, NEXTQA_GROUPS, VIDEOMME_DURATIONS

COST_FIELDS = ("selection_s", "decode_s", "downstream_s", "frames", "visual_tokens")

# LVBench's six categories in its leaderboard's order, with the abbreviations its results file uses.
LVBENCH_CATEGORIES: dict[str, str] = {
    "entity recognition": "ER",
    "event understanding": "EU",
    "key information retrieval": "KIR",
    "temporal grounding": "TG",
    "reasoning": "Rea",
    "summarization": "Sum",
}


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def task_types(r: dict[str, Any]) -> list[str]:
    """The task types of a result record (records written before `task_types` existed have one)."""
    return list(r.get("task_types") or [r.get("task_type") or "default"])


def _accuracy_by(rows: list[dict[str, Any]], keys: Callable[[dict[str, Any]], list[str]]) -> dict[str, float]:
    """Accuracy per key; a row with several keys counts in each."""
    hits: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        for k in keys(r):
            hits[k].append(float(bool(r["correct"])))
    return {k: sum(v) / len(v) for k, v in hits.items()}


def _ordered(acc: dict[str, float], order: Sequence[str]) -> dict[str, float]:
    return {k: acc[k] for k in order if k in acc} | {k: acc[k] for k in sorted(acc) if k not in order}


def _videomme(rows: list[dict[str, Any]]) -> dict[str, float]:
    return _ordered(_accuracy_by(rows, lambda r: [r["duration_group"]] if r.get("duration_group") else []),
                    VIDEOMME_DURATIONS)


def _longvideobench(rows: list[dict[str, Any]]) -> dict[str, float]:
    return _ordered(_accuracy_by(rows, lambda r: [r["duration_group"]] if r.get("duration_group") else []),
                    list(LVB_DURATION_GROUPS.values()))


def _lvbench(rows: list[dict[str, Any]]) -> dict[str, float]:
    acc = _accuracy_by(rows, task_types)
    return {LVBENCH_CATEGORIES.get(k, k): v for k, v in _ordered(acc, list(LVBENCH_CATEGORIES)).items()}


def _mlvu(rows: list[dict[str, Any]]) -> dict[str, float]:
    per_task = _ordered(_accuracy_by(rows, task_types), list(MLVU_TASK_DIRS))
    m_avg = _mean(list(per_task.values()))
    return per_task | ({"M-Avg": m_avg} if m_avg is not None else {})


def _nextqa(rows: list[dict[str, Any]]) -> dict[str, float]:
    group_of = {t: g for g, ts in NEXTQA_GROUPS.items() for t in ts}
    return _ordered(_accuracy_by(rows, lambda r: [group_of[t] for t in task_types(r) if t in group_of]),
                    list(NEXTQA_GROUPS))


# benchmark -> (what the columns are, the breakdown); benchmarks without one (jsonl) show per-task accuracy.
BREAKDOWNS: dict[str, tuple[str, Callable[[list[dict[str, Any]]], dict[str, float]]]] = {
    "videomme": ("accuracy per video length", _videomme),
    "longvideobench": ("accuracy per duration group", _longvideobench),
    "lvbench": ("accuracy per category; a question with several categories counts in each", _lvbench),
    "mlvu": ("accuracy per task; M-Avg is the mean of the task accuracies", _mlvu),
    "nextqa": ("accuracy per question group (causal CW+CH, temporal TN+TC+TP, descriptive DC+DL+DO)", _nextqa),
}


def summarize(
    records: list[dict[str, Any]],
    *,
    benchmark: str,
    downstream: DownstreamSection,
    selectors: Sequence[str],
    ks: Sequence[int],
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Accuracy per selector and k (overall, per task type, per duration group, and the benchmark's own
    breakdown) and the mean cost per question. `data` (the loader's counts, skipped records) is kept as is."""
    by: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by[(r["selector"], r["k"])].append(r)
    breakdown = BREAKDOWNS.get(benchmark)
    table: dict[str, dict[str, Any]] = {}
    for sel in selectors:
        table[sel] = {}
        for k in ks:
            rs = by.get((sel, k), [])
            ok = [r for r in rs if not r.get("error")]
            table[sel][str(k)] = {
                "n": len(rs),
                "correct": sum(bool(r["correct"]) for r in rs),
                "accuracy": _mean([float(bool(r["correct"])) for r in rs]),
                "errors": len(rs) - len(ok),
                "fallback_rate": _mean([float(bool(r.get("fallback"))) for r in ok]),
                "per_task": dict(sorted(_accuracy_by(rs, task_types).items())),
                "per_duration": _accuracy_by(rs, lambda r: [r["duration_group"]] if r.get("duration_group") else []),
                "breakdown": breakdown[1](rs) if breakdown else {},
                "cost": {f: _mean([float(r[f]) for r in ok if f in r]) for f in COST_FIELDS},
            }
    out: dict[str, Any] = {
        "benchmark": benchmark,
        "downstream": f"{downstream.backend}:{downstream.model}",
        "ks": list(ks),
        "selectors": table,
    }
    if breakdown:
        out["breakdown"] = breakdown[0]
    if data is not None:
        out["data"] = data
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def render_markdown(summary: dict[str, Any]) -> str:
    ks = [str(k) for k in summary["ks"]]
    sels = summary["selectors"]
    lines = [
        f"# {summary['benchmark']}: accuracy vs k",
        "",
        f"Downstream model: `{summary['downstream']}`. Accuracy in %, n questions per cell.",
    ]
    data = summary.get("data")
    if data:
        lines += ["", _data_line(data)]
    lines += [
        "",
        "| selector | " + " | ".join(f"k={k}" for k in ks) + " |",
        "| --- | " + " | ".join("---:" for _ in ks) + " |",
    ]
    for sel, row in sels.items():
        cells = [f"{_pct(row[k]['accuracy'])} (n={row[k]['n']})" for k in ks]
        lines.append(f"| {sel} | " + " | ".join(cells) + " |")
    cols = list(dict.fromkeys(c for row in sels.values() for k in ks for c in row[k].get("breakdown", {})))
    if cols:
        lines += ["", f"## As {summary['benchmark']} reports it", "", f"{summary.get('breakdown', '')}.", ""]
        lines.append("| selector | k | overall | " + " | ".join(cols) + " |")
        lines.append("| --- | ---: | ---: | " + " | ".join("---:" for _ in cols) + " |")
        for sel, row in sels.items():
            for k in ks:
                b = row[k].get("breakdown", {})
                lines.append(f"| {sel} | {k} | {_pct(row[k]['accuracy'])} | "
                             + " | ".join(_pct(b.get(c)) for c in cols) + " |")
    tasks = sorted({t for row in sels.values() for k in ks for t in row[k]["per_task"]})
    if len(tasks) > 1 and summary["benchmark"] not in ("mlvu", "lvbench"):  # those are the breakdown already
        lines += ["", "## Per task type", ""]
        lines.append("| selector | k | " + " | ".join(tasks) + " |")
        lines.append("| --- | ---: | " + " | ".join("---:" for _ in tasks) + " |")
        for sel, row in sels.items():
            for k in ks:
                lines.append(f"| {sel} | {k} | " + " | ".join(_pct(row[k]["per_task"].get(t)) for t in tasks) + " |")
    lines += [
        "",
        "## Cost per question",
        "",
        "Selection = the selector's analysis (its generation, or scoring the candidate frames) plus choosing "
        "k frames; decode = decoding the k frames; downstream = the answering model's forward pass.",
        "",
        "| selector | k | selection (s) | decode (s) | downstream (s) | frames | visual tokens | fallback |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for sel, row in sels.items():
        for k in ks:
            c = row[k]["cost"]
            lines.append(
                f"| {sel} | {k} | {_num(c['selection_s'], '.3f')} | {_num(c['decode_s'], '.3f')} | "
                f"{_num(c['downstream_s'], '.3f')} | {_num(c['frames'], '.1f')} | {_num(c['visual_tokens'], '.0f')} | "
                f"{_pct(row[k]['fallback_rate'])}% |"
            )
    errors = sum(row[k]["errors"] for row in sels.values() for k in ks)
    if errors:
        lines += ["", f"{errors} answers could not be computed (unreadable video); they count as wrong. See results.jsonl."]
    return "\n".join(lines) + "\n"


def _data_line(data: dict[str, Any]) -> str:
    """`"Questions: 2,172 loaded from ...; 3 of 2,175 questions skipped (malformed records, listed in summary.json)."`"""
    line = f"Questions: {data['questions']:,} loaded from `{data['data']}`"
    if data.get("limit"):
        line += f" (the first {data['limit']:,})"
    line += f"; {data['skipped_line']}"
    if data.get("skipped"):
        line += " (malformed records, listed in summary.json under data.skipped_records)"
    return line + "."


def plot_accuracy(summary: dict[str, Any], path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    ks = summary["ks"]
    for sel, row in summary["selectors"].items():
        acc = [row[str(k)]["accuracy"] for k in ks]
        pts = [(k, 100 * a) for k, a in zip(ks, acc, strict=True) if a is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=sel)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("frames k")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{summary['benchmark']} ({summary['downstream']})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)

    atomic_write_bytes(path, buf.getvalue())


def write_reports(out: Path, summary: dict[str, Any]) -> None:
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "report.md", render_markdown(summary))
    plot_accuracy(summary, out / "accuracy_vs_k.png")
