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
- `summary.json`, `report.md` (accuracy per k, per task type, cost per question) and `accuracy_vs_k.png`.

The two JSONL files are append-only journals (one fsynced line per record); a line torn by a kill is
dropped on resume. Everything else is written atomically.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pipeline.config import DownstreamSection, EvalConfig
from pipeline.contracts import EvalQuestion
from pipeline.errors import DataError, VideoError
from pipeline.frame_selectors import FrameSelector, VideoMeta, make_selector
from pipeline.io import atomic_write_json, atomic_write_text, dumps_line
from pipeline.tiny_model import resolve_model_name

RUN_FILE = "run.json"
RESULTS_FILE = "results.jsonl"
ANALYSES_FILE = "analyses.jsonl"


# ----------------------------------------------------------------------------------------------------
# Append-only journals
# ----------------------------------------------------------------------------------------------------


class Journal:
    """A JSONL file of records keyed by some of their fields, appended one fsynced line at a time.

    A kill can only tear the last line; it is dropped (and cut from the file) when the journal is reopened,
    so the record is simply recomputed. A bad line anywhere else is a real corruption and an error.
    """

    def __init__(self, path: Path, key_fields: Sequence[str]) -> None:
        self.path = path
        self.key_fields = tuple(key_fields)
        self.records: dict[tuple[Any, ...], dict[str, Any]] = {}
        if path.is_file():
            self._load()

    def key(self, rec: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(rec[f] for f in self.key_fields)

    def _load(self) -> None:
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        good_end = offset = 0
        for i, raw in enumerate(lines):
            if raw.strip():
                try:
                    rec = json.loads(raw)
                    if not isinstance(rec, dict):
                        raise ValueError("not a JSON object")
                    self.records[self.key(rec)] = rec
                except (ValueError, KeyError) as exc:
                    if any(x.strip() for x in lines[i + 1 :]):
                        raise DataError(f"{self.path}:{i + 1}: corrupt record ({exc}); delete the line to resume") from None
                    break  # a torn last line: recompute it
            offset += len(raw) + 1
            good_end = min(offset, len(data))
        with self.path.open("r+b") as fh:
            fh.truncate(good_end)
            if good_end and not data[:good_end].endswith(b"\n"):
                fh.seek(good_end)
                fh.write(b"\n")

    def get(self, *key: Any) -> dict[str, Any] | None:
        return self.records.get(tuple(key))

    def add(self, rec: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(dumps_line(rec) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.records[self.key(rec)] = rec


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

            path = resolve_model_name(downstream.model)
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


def evaluate(
    cfg: EvalConfig,
    *,
    questions: list[EvalQuestion] | None = None,
    backend: Any = None,
    selectors: list[FrameSelector] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) an evaluation; returns the summary also written to `<output_dir>/summary.json`.

    `backend` (a `rewards.backends.DownstreamBackend`) and `selectors` default to those the config
    describes; passing them lets a caller reuse loaded models.
    """
    from tqdm import tqdm

    from pipeline.eval_data import load_questions

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_run_folder(out, cfg)
    if questions is None:
        questions = load_questions(cfg.benchmark, cfg.data, video_root=cfg.video_root, limit=cfg.limit, check_videos=True)
    if selectors is None:
        selectors = [make_selector(s) for s in cfg.selectors]
    labels = [s.label for s in selectors]
    if len(set(labels)) != len(labels):
        raise DataError(f"two selectors share the label {labels}; set `label:` to tell them apart")
    ks = sorted(set(cfg.k))
    results = Journal(out / RESULTS_FILE, ("selector", "k", "question_id"))
    analyses = Journal(out / ANALYSES_FILE, ("selector_id", "question_id"))
    counter = VisualTokenCounter(cfg.downstream)
    frames: Any = None
    metas: dict[str, VideoMeta] = {}

    for sel in selectors:
        todo = [q for q in questions if any(results.get(sel.label, k, q.question_id) is None for k in ks)]
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
                meta = metas.get(q.video) or VideoMeta.read(q.video)
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
            except VideoError as exc:  # one unreadable video must not end a day-long run
                for k in ks:
                    if results.get(sel.label, k, q.question_id) is None:
                        results.add(_error_record(sel, q, k, str(exc)))
                continue
            for k in ks:
                if results.get(sel.label, k, q.question_id) is None:
                    results.add(_answer(sel, q, k, meta, analysis, frames, backend, counter, cfg.downstream))

    summary = summarize(
        [r for r in results.records.values() if r["selector"] in labels and r["k"] in ks and
         r["question_id"] in {q.question_id for q in questions}],
        benchmark=cfg.benchmark,
        downstream=cfg.downstream,
        selectors=labels,
        ks=ks,
    )
    write_reports(out, summary)
    return summary


def _error_record(sel: FrameSelector, q: EvalQuestion, k: int, error: str) -> dict[str, Any]:
    return {"selector": sel.label, "selector_id": sel.selector_id, "k": k, "question_id": q.question_id,
            "task_type": q.task_type, "answer": q.answer, "pred": None, "correct": False, "error": error}


def _answer(
    sel: FrameSelector,
    q: EvalQuestion,
    k: int,
    meta: VideoMeta,
    analysis: dict[str, Any],
    frames: Any,
    backend: Any,
    counter: VisualTokenCounter,
    downstream: DownstreamSection,
) -> dict[str, Any]:
    from rewards.backends import MCQRequest

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
        "k": k,
        "question_id": q.question_id,
        "task_type": q.task_type,
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


# ----------------------------------------------------------------------------------------------------
# Summary, markdown table, plot
# ----------------------------------------------------------------------------------------------------

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
    from pipeline.io import atomic_write_bytes

    atomic_write_bytes(path, buf.getvalue())


def write_reports(out: Path, summary: dict[str, Any]) -> None:
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "report.md", render_markdown(summary))
    plot_accuracy(summary, out / "accuracy_vs_k.png")
