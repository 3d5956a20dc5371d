"""P1/P2 key clips from the final scene scores (SPEC section 1), and the KVTP sparsity filter.

A scene whose final score is >= p1 (4.9) is P1 (key evidence), one in [p2, p1) (4.3) is P2 (secondary). Runs
of adjacent scenes with one priority become one clip (the selector predicts time spans, and a cut inside one
event should not split it); the clip keeps the reasons of its scenes. Scenes without a score (a recorded
failure) are never labelled: they also break a run, since nothing is known about them.

Sparsity filter (optional, after KVTP section 3): relevance is spread over N points of a uniform grid over
the video (each point takes the score of the scene it falls in), turned into per-frame budgets
`r = alpha * N * softmax(s / temperature)`, and the query is kept only if `max(r) >= beta * alpha`, i.e.
`N * max(softmax) >= beta`. A query whose evidence covers most of the video (a holistic question) gives a
flat softmax and is dropped: no clip prediction can beat uniform sampling on it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pipeline.core.contracts import KeyClip, Scene, SceneScore


def priority_of(score: float, p1: float, p2: float) -> str | None:
    if score >= p1:
        return "P1"
    if score >= p2:
        return "P2"
    return None


def _join_reasons(reasons: Sequence[str]) -> str:
    return "; ".join(dict.fromkeys(r.strip() for r in reasons if r and r.strip()))


def clips_from_scores(
    scenes: Sequence[Scene],
    scores: Sequence[SceneScore],
    *,
    p1: float = 4.9,
    p2: float = 4.3,
    merge_adjacent: bool = True,
) -> list[KeyClip]:
    """Key clips in time order. Adjacent = consecutive in the scene list with no gap in time."""
    if p2 > p1:
        raise ValueError(f"p2 threshold ({p2}) is above the p1 threshold ({p1})")
    by_scene = {s.scene_index: s for s in scores}
    runs: list[tuple[str, list[Scene], list[str]]] = []
    prev: Scene | None = None
    for scene in sorted(scenes, key=lambda s: s.start_frame):
        sc = by_scene.get(scene.index)
        pri = priority_of(sc.score, p1, p2) if sc is not None else None
        if pri is None:
            prev = None
            continue
        contiguous = prev is not None and (prev.end_frame == scene.start_frame or abs(prev.end_s - scene.start_s) < 1e-3)
        if merge_adjacent and runs and contiguous and runs[-1][0] == pri:
            runs[-1][1].append(scene)
            runs[-1][2].append(sc.reason)
        else:
            runs.append((pri, [scene], [sc.reason]))
        prev = scene
    return [
        KeyClip(start_s=members[0].start_s, end_s=members[-1].end_s, priority=pri, reason=_join_reasons(reasons))
        for pri, members, reasons in runs
    ]


def keyframe_sparsity(
    scenes: Sequence[Scene], scores: Sequence[SceneScore], duration_s: float, *, points: int = 64, temperature: float = 1.0
) -> float:
    """KVTP's max(r) / alpha = N * max(softmax(s / temperature)) over an N-point uniform grid.

    1.0 means relevance is flat; N means all of it sits on one point. Points in unscored scenes get the lowest
    score (1), so a failure never makes a query look sparser than its scores say.
    """
    by_scene = {s.scene_index: s.score for s in scores}
    ordered = sorted(scenes, key=lambda s: s.start_s)
    values = []
    j = 0
    for i in range(points):
        t = (i + 0.5) * duration_s / points
        while j + 1 < len(ordered) and ordered[j].end_s <= t:
            j += 1
        scene = ordered[j] if ordered else None
        values.append(by_scene.get(scene.index, 1.0) if scene is not None else 1.0)
    top = max(values)
    denom = sum(math.exp((v - top) / temperature) for v in values)
    return points * 1.0 / denom  # the max softmax weight is exp(0) / denom


def is_sparse_enough(sparsity: float, beta: float) -> bool:
    return sparsity >= beta
