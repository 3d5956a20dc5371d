"""What an evaluation run reports: accuracy and cost per selector and k (summary.json), a Markdown table
(report.md) and the accuracy-vs-k plot (accuracy_vs_k.png)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.core.config import DownstreamSection
from pipeline.core.io import atomic_write_bytes, atomic_write_json, atomic_write_text

COST_FIELDS = ("selection_s", "decode_s", "downstream_s", "frames", "visual_tokens")


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def summarize(
    records: list[dict[str, Any]],
    *,
    benchmark: str,
    downstream: DownstreamSection,
    selectors: Sequence[str],
    ks: Sequence[int],
) -> dict[str, Any]:
    """Accuracy per selector and k (overall and per task type) and mean cost per question."""
    by: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by[(r["selector"], r["k"])].append(r)
    table: dict[str, dict[str, Any]] = {}
    for sel in selectors:
        table[sel] = {}
        for k in ks:
            rs = by.get((sel, k), [])
            per_task: dict[str, list[bool]] = defaultdict(list)
            for r in rs:
                per_task[r["task_type"]].append(bool(r["correct"]))
            ok = [r for r in rs if not r.get("error")]
            table[sel][str(k)] = {
                "n": len(rs),
                "correct": sum(bool(r["correct"]) for r in rs),
                "accuracy": _mean([float(bool(r["correct"])) for r in rs]),
                "errors": len(rs) - len(ok),
                "fallback_rate": _mean([float(bool(r.get("fallback"))) for r in ok]),
                "per_task": {t: _mean([float(c) for c in cs]) for t, cs in sorted(per_task.items())},
                "cost": {f: _mean([float(r[f]) for r in ok if f in r]) for f in COST_FIELDS},
            }
    return {
        "benchmark": benchmark,
        "downstream": f"{downstream.backend}:{downstream.model}",
        "ks": list(ks),
        "selectors": table,
    }


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
        "",
        "| selector | " + " | ".join(f"k={k}" for k in ks) + " |",
        "| --- | " + " | ".join("---:" for _ in ks) + " |",
    ]
    for sel, row in sels.items():
        cells = [f"{_pct(row[k]['accuracy'])} (n={row[k]['n']})" for k in ks]
        lines.append(f"| {sel} | " + " | ".join(cells) + " |")
    tasks = sorted({t for row in sels.values() for k in ks for t in row[k]["per_task"]})
    if len(tasks) > 1:
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
