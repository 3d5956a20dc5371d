"""What the demo measures on held-out generated videos: where a selector's frames fall, and what they let a
downstream model answer, each against uniform sampling with the same k.

The generator knows the time span of the scene that answers every held-out question (`answer_span_s`), so:
- **frame hit rate**: the share of the k chosen frames inside that span;
- **scene recall**: the share of questions with at least one chosen frame inside it;
- **fallback**: the share of questions whose selector output had no valid clip (the sampler then used uniform
  frames, exactly as at inference);
- **downstream accuracy**: the share of questions that `data_builder.scene_oracle.SceneOracle`, a reader of the
  generated frames that sees only the k frames it is given, answers correctly (its top option is the answer).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from data_builder.scene_oracle import SceneOracle, answered_correctly
from data_builder.video import FrameCache, VideoReader, uniform_indices


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


class DownstreamJudge:
    """Asks the oracle each question over a given set of frames (decoded once per video and size)."""

    def __init__(self, *, max_pixels: int | None, oracle: SceneOracle | None = None) -> None:
        self.oracle = oracle or SceneOracle()
        self.max_pixels = max_pixels
        self.frames = FrameCache(max_videos=4)

    def correct(self, video: str, indices: Sequence[int], question: str, options: Sequence[str], answer: int) -> bool:
        images = self.frames.images(video, list(indices), max_pixels=self.max_pixels)
        votes = self.oracle.votes(images, question, options)
        n = max(len(images), 1)
        scores = [self.oracle.strength * v / n for v in votes]
        return answered_correctly(scores, int(answer))


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    return sum(float(r[key]) for r in rows) / len(rows) if rows else None


def measure(selections: list[dict[str, Any]], judge: DownstreamJudge | None = None) -> dict[str, Any]:
    """Per question and overall: hit rate, scene recall, fallback and (with a judge) downstream accuracy of the
    selector's frames, and the same for uniform frames at the same k. Questions without a known span are skipped."""
    rows = []
    for rec in selections:
        span = rec.get("answer_span_s")
        if not span:
            continue
        k = len(rec["indices"])
        u_idx, u_times = uniform_times(rec["video"], k)
        sel_frac, sel_any = span_hits(rec["timestamps_s"], span)
        uni_frac, uni_any = span_hits(u_times, span)
        row = {
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
        if judge is not None and rec.get("options") and rec.get("answer") is not None:
            args = (rec["question"], rec["options"], rec["answer"])
            row["selector_correct"] = judge.correct(rec["video"], rec["indices"], *args)
            row["uniform_correct"] = judge.correct(rec["video"], u_idx, *args)
        rows.append(row)
    judged = [r for r in rows if "selector_correct" in r]
    return {
        "questions": len(rows),
        "selector_frame_hit_rate": _mean(rows, "selector_frac"),
        "uniform_frame_hit_rate": _mean(rows, "uniform_frac"),
        "selector_scene_recall": _mean(rows, "selector_hit"),
        "uniform_scene_recall": _mean(rows, "uniform_hit"),
        "fallback_rate": _mean(rows, "fallback"),
        "selector_accuracy": _mean(judged, "selector_correct"),
        "uniform_accuracy": _mean(judged, "uniform_correct"),
        "rows": rows,
    }
