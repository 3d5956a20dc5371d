"""The any-k sampler (SPEC section 5): predicted clips -> exactly k frame indices. Pure numpy, deterministic.

The selector predicts *clips*; the downstream model needs *frames*. This function is the bridge, and the
only place where the frame budget k enters, which is what makes one prediction serve every k.

Modes
- `focused`: all k frames inside the clips. Frames are allocated over clips in proportion to
  priority weight x clip length (seconds) by largest remainder, every P1 clip gets at least one frame
  when k >= the number of P1 clips, and each clip's frames sit at the midpoints of equal sub-spans.
- `hybrid`: round(background_share * k) frames go uniformly over the time outside the clips (context),
  the rest as in `focused` (evidence).
- `auto`: `focused` for k <= 16, `hybrid` above (the paper's finding: focus wins at small k, context helps
  at large k).
- `set` (after HFS): greedy maximisation of `l_rel*Rel + l_cov*Cov - l_red*Red` (HFS eq. 11-15 with a
  binary mask) over a uniform candidate grid, with per-frame scores from the clips (optionally blended with
  image-text similarity). It trades evidence for temporal spread instead of following fixed quotas.
- `soft` (after KVTP): the `hybrid` frames plus a per-frame token budget
  `r_i = alpha * k * softmax(s_i / temperature)` (KVTP eq. 1), for downstream token pruning: frames in key
  clips keep more visual tokens, context frames fewer, and the mean keep-rate is alpha.

Whatever the mode, the result has exactly min(k, num_frames) sorted unique indices. Clips that fall
outside the video are dropped; when no valid clip is left the sampler returns uniform frames and sets
`fallback` (and says why), so a bad prediction never crashes a reward computation or an evaluation.

Times and frames: frame i is presented at `timestamps_s[i]` (VFR-correct, from the decoder) or at i/fps,
and is shown until the next frame starts. A clip [start, end) owns the frames presented inside it; a clip
shorter than one frame owns the frame on screen at its midpoint.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from pipeline.core.config.base import SAMPLER_MODES
from pipeline.core.contracts import PRIORITY_RANK, KeyClip
from pipeline.core.errors import KframesError
from pipeline.core.prompt import _merge_overlapping

MODES = SAMPLER_MODES
DEFAULT_WEIGHTS: dict[str, float] = {"P1": 2.0, "P2": 1.0}
AUTO_FOCUSED_MAX_K = 16


class SamplerError(KframesError, ValueError):
    """Bad arguments to the sampler (k <= 0, unknown mode, timestamps that do not match the video)."""


@dataclass
class SampleResult:
    """What the sampler chose and why.

    `allocations` has one entry per (merged, valid) clip in time order: its span, priority, frame range
    [first_frame, end_frame), the exact quota, the frames it was given and the frames of the result that lie
    in it. `token_budget` (soft mode only) is aligned with `indices`.
    """

    indices: list[int]
    fallback: bool
    mode: str
    allocations: list[dict[str, Any]]
    token_budget: list[float] | None = None
    fallback_reason: str | None = None
    background: int = 0
    dropped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Clip:
    start_s: float
    end_s: float
    priority: str
    lo: int  # first frame of the clip
    hi: int  # one past its last frame

    @property
    def capacity(self) -> int:
        return self.hi - self.lo

    @property
    def length_s(self) -> float:
        return self.end_s - self.start_s


class _Timeline:
    """Frame <-> time mapping of one video, without materialising per-frame arrays for CFR video."""

    def __init__(self, num_frames: int, fps: float, timestamps_s: Sequence[float] | None) -> None:
        self.n = num_frames
        self.fps = fps
        if timestamps_s is None:
            self.ts: np.ndarray | None = None
            self.duration = num_frames / fps
            return
        ts = np.asarray(timestamps_s, dtype=np.float64)
        if ts.shape != (num_frames,):
            raise SamplerError(f"timestamps_s has {ts.size} entries but the video has {num_frames} frames")
        if not np.all(np.isfinite(ts)) or np.any(np.diff(ts) < 0):
            raise SamplerError("timestamps_s must be finite and non-decreasing")
        self.ts = ts
        last = float(ts[-1] - ts[-2]) if num_frames > 1 else 1.0 / fps
        self.duration = float(ts[-1]) + (last if last > 0 else 1.0 / fps)

    def time(self, frames: np.ndarray) -> np.ndarray:
        return frames / self.fps if self.ts is None else self.ts[frames]

    def first_at_or_after(self, t: float) -> int:
        """The first frame presented at or after time t."""
        if self.ts is None:
            return int(min(self.n, max(0, math.ceil(t * self.fps - 1e-9))))
        return int(np.searchsorted(self.ts, t, side="left"))

    def on_screen(self, t: np.ndarray) -> np.ndarray:
        """The frame on screen at each time t (the last frame presented at or before t)."""
        t = np.asarray(t, dtype=np.float64)
        if self.ts is None:
            f = np.floor(t * self.fps + 1e-9).astype(np.int64)
        else:
            f = np.searchsorted(self.ts, t, side="right") - 1
        return np.clip(f, 0, self.n - 1)


def _valid_clips(clips: Sequence[KeyClip], tl: _Timeline) -> tuple[list[_Clip], list[str]]:
    """Merge overlaps (keeping the higher priority), clamp to the video, map spans to frame ranges."""
    dropped: list[str] = []
    inside: list[KeyClip] = []
    for c in clips:
        if c.priority not in PRIORITY_RANK:
            dropped.append(f"clip {c.start_s}-{c.end_s}s: unknown priority {c.priority!r}")
        elif c.start_s >= tl.duration:
            dropped.append(f"clip {c.start_s}-{c.end_s}s starts after the video ends ({tl.duration:.2f}s)")
        else:
            inside.append(c if c.end_s <= tl.duration else c.model_copy(update={"end_s": tl.duration}))
    out: list[_Clip] = []
    for c in _merge_overlapping(inside):
        lo, hi = tl.first_at_or_after(c.start_s), tl.first_at_or_after(c.end_s)
        if hi <= lo:  # shorter than a frame: the frame on screen at its midpoint
            lo = int(tl.on_screen(np.array([(c.start_s + c.end_s) / 2]))[0])
            hi = lo + 1
        prev = out[-1] if out else None
        if (
            prev is not None and lo < prev.hi
        ):  # two sub-frame clips on the same frame: one clip, like an overlap
            pri = prev.priority if PRIORITY_RANK[prev.priority] >= PRIORITY_RANK[c.priority] else c.priority
            out[-1] = _Clip(prev.start_s, max(prev.end_s, c.end_s), pri, prev.lo, max(prev.hi, hi))
        else:
            out.append(_Clip(c.start_s, c.end_s, c.priority, lo, hi))
    return out, dropped


def largest_remainder(quotas: np.ndarray, total: int, rank: np.ndarray | None = None) -> np.ndarray:
    """Round non-negative `quotas` (summing to `total`) to integers with the same sum.

    Each entry gets floor(quota); the leftover units go to the largest fractional parts; ties go to the
    higher `rank` (priority), then to the earlier entry.
    """
    base = np.floor(quotas + 1e-9).astype(np.int64)
    left = int(total - base.sum())
    if left > 0:
        frac = np.round(quotas - base, 9)
        rank = np.zeros(len(quotas)) if rank is None else rank
        order = np.lexsort((np.arange(len(quotas)), -rank, -frac))
        base[order[:left]] += 1
    return base


def allocate(
    clips: Sequence[_Clip], target: int, weights: Mapping[str, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Split `target` frames over clips: quota ~ weight x length, largest remainder, capped at each clip's
    frame count (the excess goes to the clips with room, by the same rule), >= 1 per P1 clip when
    target >= the number of P1 clips. Returns (allocation, exact quotas). May allocate fewer than
    `target` only when the clips hold fewer frames than that.
    """
    m = len(clips)
    w = np.array([weights[c.priority] * max(c.length_s, 1e-6) for c in clips], dtype=np.float64)
    cap = np.array([c.capacity for c in clips], dtype=np.int64)
    rank = np.array([PRIORITY_RANK[c.priority] for c in clips], dtype=np.float64)
    target = min(target, int(cap.sum()))
    quotas = target * w / w.sum()
    alloc = np.zeros(m, dtype=np.int64)
    open_ = np.ones(m, dtype=bool)
    remaining = target
    while remaining > 0 and open_.any():  # water-filling: fix the clips that overflow, re-split the rest
        q = np.zeros(m)
        q[open_] = remaining * w[open_] / w[open_].sum()
        trial = largest_remainder(q, remaining, rank)
        over = open_ & (trial > cap)
        if not over.any():
            alloc[open_] = trial[open_]
            break
        alloc[over] = cap[over]
        remaining -= int(cap[over].sum())
        open_ &= ~over

    is_p1 = np.array([c.priority == "P1" for c in clips])
    if target >= int(is_p1.sum()):
        for i in np.flatnonzero(is_p1 & (alloc == 0)):
            # take one frame from the clip furthest above its exact share that can spare it
            spare = (alloc > np.where(is_p1, 1, 0)) & (np.arange(m) != i)
            donor = int(np.flatnonzero(spare)[np.argmax((alloc - quotas)[spare])])
            alloc[donor] -= 1
            alloc[i] += 1
    return alloc, quotas


class _Picker:
    """Places frames without repeats: the frame nearest each target, else the nearest unused one."""

    def __init__(self, tl: _Timeline) -> None:
        self.tl = tl
        self.used: set[int] = set()

    def place(self, targets: np.ndarray, lo: int, hi: int) -> int:
        """Place one frame per target time inside [lo, hi); returns how many could not be placed."""
        missed = 0
        for f in self.tl.on_screen(targets).tolist():
            f = min(max(f, lo), hi - 1)
            if f in self.used:
                f = self._nearest_unused(f, lo, hi)
                if f is None:
                    missed += 1
                    continue
            self.used.add(f)
        return missed

    def _nearest_unused(self, f: int, lo: int, hi: int) -> int | None:
        for d in range(1, hi - lo):
            for g in (f - d, f + d):
                if lo <= g < hi and g not in self.used:
                    return g
        return None


def _gaps(clips: Sequence[_Clip], n: int) -> list[tuple[int, int]]:
    """Frame ranges outside every clip, in order."""
    out, cur = [], 0
    for c in sorted(clips, key=lambda c: c.lo):
        if c.lo > cur:
            out.append((cur, c.lo))
        cur = max(cur, c.hi)
    if cur < n:
        out.append((cur, n))
    return out


def _spread_over(ranges: Sequence[tuple[int, int]], count: int, tl: _Timeline, picker: _Picker) -> int:
    """Place `count` frames uniformly over the *time* covered by `ranges` (midpoints of equal shares of the
    concatenated time), each inside its range. Returns how many could not be placed."""
    if count <= 0 or not ranges:
        return count
    starts = np.array([float(tl.time(np.array([lo]))[0]) for lo, _ in ranges])
    ends = np.array([float(tl.time(np.array([hi]))[0]) if hi < tl.n else tl.duration for _, hi in ranges])
    lengths = np.maximum(ends - starts, 1e-9)
    cum = np.concatenate([[0.0], np.cumsum(lengths)])
    targets = (np.arange(count) + 0.5) * cum[-1] / count
    which = np.clip(np.searchsorted(cum, targets, side="right") - 1, 0, len(ranges) - 1)
    missed = 0
    for r in range(len(ranges)):
        sel = targets[which == r]
        if sel.size:
            lo, hi = ranges[r]
            missed += picker.place(starts[r] + sel - cum[r], lo, hi)
    return missed


def _refill(missed: int, clips: Sequence[_Clip], tl: _Timeline, picker: _Picker) -> None:
    """Fill `missed` frames uniformly over the unused frames, outside the clips first, then anywhere."""
    for ranges in (_gaps(clips, tl.n), [(0, tl.n)]):
        if missed <= 0:
            return
        mask = np.zeros(tl.n, dtype=bool)
        for lo, hi in ranges:
            mask[lo:hi] = True
        mask[list(picker.used)] = False
        free = np.flatnonzero(mask)
        if free.size == 0:
            continue
        take = min(missed, free.size)
        chosen = free[np.floor((np.arange(take) + 0.5) * free.size / take).astype(np.int64)]
        picker.used.update(chosen.tolist())
        missed -= take


def uniform_frames(
    num_frames: int, k: int, fps: float = 1.0, timestamps_s: Sequence[float] | None = None
) -> list[int]:
    """min(k, num_frames) frames uniform in time: the frame on screen at the midpoint of each of k equal
    spans (for constant frame rate, index floor((j + 0.5) * num_frames / k))."""
    tl = _Timeline(num_frames, fps, timestamps_s)
    picker = _Picker(tl)
    k = min(k, num_frames)
    _refill(_spread_over([(0, num_frames)], k, tl, picker), [], tl, picker)
    return sorted(picker.used)


def _frame_scores(
    frames: np.ndarray,
    clips: Sequence[_Clip],
    weights: Mapping[str, float],
    score_floor: float,
    frame_scores: Any,
    sim_weight: float,
    num_frames: int,
) -> np.ndarray:
    """Relevance of each frame in `frames`: its clip's priority weight / the top weight (P1 = 1, P2 = 0.5
    by default), `score_floor` outside clips; blended with min-max-normalised similarity when given."""
    top = max(weights.values())
    s = np.full(frames.shape, score_floor, dtype=np.float64)
    for c in clips:
        inside = (frames >= c.lo) & (frames < c.hi)
        s[inside] = np.maximum(s[inside], weights[c.priority] / top)
    if frame_scores is None:
        return s
    if isinstance(frame_scores, Mapping):
        keys = np.array(sorted(int(k) for k in frame_scores), dtype=np.int64)
        vals = np.array([float(frame_scores[int(k)]) for k in keys], dtype=np.float64)
    else:
        vals = np.asarray(frame_scores, dtype=np.float64)
        if vals.shape != (num_frames,):
            raise SamplerError(
                f"frame_scores has {vals.size} entries; give one per video frame ({num_frames}) or a "
                "{frame_index: score} mapping"
            )
        keys = np.arange(num_frames)
    if keys.size == 0 or not np.all(np.isfinite(vals)):
        raise SamplerError("frame_scores must be non-empty and finite")
    # each frame takes the score of the nearest scored frame
    pos = np.clip(np.searchsorted(keys, frames), 0, keys.size - 1)
    prev = np.clip(pos - 1, 0, keys.size - 1)
    nearest = np.where(np.abs(keys[prev] - frames) <= np.abs(keys[pos] - frames), prev, pos)
    sim = vals[nearest]
    span = sim.max() - sim.min()
    sim = (sim - sim.min()) / span if span > 0 else np.zeros_like(sim)
    return (1 - sim_weight) * s + sim_weight * sim


@functools.lru_cache(maxsize=8)
def _kernel(n: int, gamma: float) -> np.ndarray:
    """HFS's Gaussian temporal kernel between grid positions (eq. 13), cached: it only depends on N, gamma."""
    pos = np.arange(n, dtype=np.float64)
    k = np.exp(-((pos[:, None] - pos[None, :]) ** 2) / (2 * gamma**2))
    k.setflags(write=False)
    return k


def hfs_greedy(
    scores: np.ndarray, k: int, *, l_rel: float, l_cov: float, l_red: float, tau_c: float, gamma: float
) -> np.ndarray:
    """Greedy maximiser of HFS's set objective with a binary mask m over N grid positions:

    F(S) = l_rel * sum_{i in S} s_i
         + l_cov * tau_c * log( sum_{i in S} exp(s_i / tau_c) + (N - |S|) )   # eq. 12, exp(0) = 1 off S
         - l_red * sum_{i != j in S} exp(-(i - j)^2 / (2 gamma^2))             # eq. 13-14, grid units

    Each step adds the position with the largest marginal gain (ties: the earliest), so exactly k come out.
    Returns grid positions in the order they were chosen.
    """
    n = scores.size
    kernel = _kernel(n, float(gamma))
    e = np.exp(scores / tau_c)
    chosen: list[int] = []
    free = np.ones(n, dtype=bool)
    red = np.zeros(n)  # sum of kernel to the chosen positions
    cov_sum = 0.0
    for step in range(k):
        rest = n - step
        cov_gain = tau_c * (np.log(cov_sum + e + rest - 1) - math.log(cov_sum + rest))
        gain = l_rel * scores + l_cov * cov_gain - l_red * 2 * red
        gain[~free] = -np.inf
        j = int(np.argmax(gain))
        chosen.append(j)
        free[j] = False
        cov_sum += float(e[j])
        red += kernel[j]
    return np.array(chosen, dtype=np.int64)


@dataclass(frozen=True)
class SamplerParams:
    """The constants of the `set` (HFS) and `soft` (KVTP) modes; the defaults are the papers'.

    set: relevance/coverage/redundancy weights l_rel/l_cov/l_red, tau_c and gamma (in candidate-grid steps); it
    chooses among `num_candidates` uniform grid frames (at least k). Per-frame scores are the clip score, or
    `score_floor` outside clips, blended with image-text similarity at `sim_weight`. soft: `alpha` is the mean
    keep-rate and `temperature` the softmax temperature of the per-frame token budget (scores as in set).
    """

    l_rel: float = 0.5
    l_cov: float = 0.3
    l_red: float = 0.2
    tau_c: float = 2.0
    gamma: float = 10.0
    num_candidates: int = 256
    score_floor: float = 0.05
    sim_weight: float = 0.5
    alpha: float = 0.2
    temperature: float = 0.5


DEFAULT_PARAMS = SamplerParams()


def sample_frames(
    clips: Sequence[KeyClip],
    num_frames: int,
    fps: float,
    k: int,
    mode: str = "auto",
    *,
    weights: Mapping[str, float] | None = None,
    background_share: float = 0.25,
    timestamps_s: Sequence[float] | None = None,
    frame_scores: Sequence[float] | Mapping[int, float] | None = None,
    params: SamplerParams = DEFAULT_PARAMS,
) -> SampleResult:
    """Turn predicted clips into exactly min(k, num_frames) sorted unique frame indices.

    clips: the selector's clips (seconds). num_frames/fps/timestamps_s: the video (timestamps_s, one per
    frame, makes it VFR-correct). k: the frame budget. mode: focused | hybrid | auto | set | soft.
    weights: priority weights (default P1=2, P2=1; a partial mapping keeps the other default).
    background_share: hybrid's (and soft's) share of k outside the clips.
    frame_scores: image-text similarity of frames (one per frame, or a {frame: score} mapping), blended into the
    per-frame scores of the set and soft modes. params: those modes' constants (`SamplerParams`).
    """
    p = params
    if mode not in MODES:
        raise SamplerError(f"unknown sampler mode {mode!r}; expected one of {', '.join(MODES)}")
    if isinstance(k, bool) or int(k) != k or k <= 0:
        raise SamplerError(f"k must be a positive integer, got {k!r}")
    if int(num_frames) != num_frames or num_frames <= 0:
        raise SamplerError(f"num_frames must be a positive integer, got {num_frames!r}")
    if not fps > 0 or not math.isfinite(fps):
        raise SamplerError(f"fps must be positive, got {fps!r}")
    if not 0.0 <= background_share <= 1.0:
        raise SamplerError(f"background_share must be in [0, 1], got {background_share}")
    w = {**DEFAULT_WEIGHTS, **(weights or {})}  # a partial mapping keeps the default for the other priority
    if set(w) != set(PRIORITY_RANK) or any(not (math.isfinite(v) and v > 0) for v in w.values()):
        raise SamplerError(f"weights must be positive and only for P1 and P2, got {dict(weights or {})}")
    if not all(math.isfinite(x) and x > 0 for x in (p.gamma, p.tau_c, p.temperature, p.alpha, p.num_candidates)):
        raise SamplerError("gamma, tau_c, temperature, alpha and num_candidates must be positive and finite")
    num_frames, k = int(num_frames), int(k)
    k_eff = min(k, num_frames)
    tl = _Timeline(num_frames, float(fps), timestamps_s)
    valid, dropped = _valid_clips(clips, tl)
    resolved = ("focused" if k <= AUTO_FOCUSED_MAX_K else "hybrid") if mode == "auto" else mode

    if not valid:
        indices = uniform_frames(num_frames, k_eff, fps, timestamps_s)
        budget = [p.alpha] * len(indices) if mode == "soft" else None
        reason = "no clips" if not clips else "no clip lies inside the video"
        return SampleResult(indices, True, resolved, [], budget, reason, len(indices), dropped)

    def scores_of(frames: np.ndarray) -> np.ndarray:
        return _frame_scores(frames, valid, w, p.score_floor, frame_scores, p.sim_weight, num_frames)

    picker = _Picker(tl)
    quotas = np.zeros(len(valid))
    alloc = np.zeros(len(valid), dtype=np.int64)
    if resolved == "set":
        grid = np.array(
            uniform_frames(num_frames, max(p.num_candidates, k_eff), fps, timestamps_s), dtype=np.int64
        )
        chosen = hfs_greedy(
            scores_of(grid), k_eff, l_rel=p.l_rel, l_cov=p.l_cov, l_red=p.l_red, tau_c=p.tau_c, gamma=p.gamma
        )
        picker.used.update(grid[chosen].tolist())
        alloc = np.array(
            [int(((grid[chosen] >= c.lo) & (grid[chosen] < c.hi)).sum()) for c in valid], dtype=np.int64
        )
    else:
        n_p1 = sum(c.priority == "P1" for c in valid)
        clip_target = k_eff
        if resolved in ("hybrid", "soft"):
            clip_target = k_eff - int(math.floor(background_share * k_eff + 0.5))
            if k_eff >= n_p1:  # the P1 guarantee outranks the background share
                clip_target = max(clip_target, n_p1)
        alloc, quotas = allocate(valid, clip_target, w)
        missed = 0
        for i in sorted(range(len(valid)), key=lambda i: -PRIORITY_RANK[valid[i].priority]):  # P1 first
            c, n = valid[i], int(alloc[i])
            if n:
                missed += picker.place(c.start_s + (np.arange(n) + 0.5) * c.length_s / n, c.lo, c.hi)
        background = k_eff - int(alloc.sum())  # the share, plus what the clips could not hold
        missed += _spread_over(_gaps(valid, num_frames), background, tl, picker)
        _refill(missed, valid, tl, picker)

    indices = sorted(picker.used)
    if len(indices) != k_eff:  # an invariant of the placement above, checked even under `python -O`
        raise RuntimeError(f"sampler placed {len(indices)} frames instead of {k_eff}")
    arr = np.array(indices, dtype=np.int64)
    allocations = []
    in_any = np.zeros(arr.shape, dtype=bool)
    for i, c in enumerate(valid):
        inside = (arr >= c.lo) & (arr < c.hi)
        in_any |= inside
        allocations.append(
            {
                "start_s": c.start_s,
                "end_s": c.end_s,
                "priority": c.priority,
                "first_frame": c.lo,
                "end_frame": c.hi,
                "quota": round(float(quotas[i]), 4),
                "allocated": int(alloc[i]),
                "frames": int(inside.sum()),
            }
        )
    budget = None
    if resolved == "soft":
        s = scores_of(arr) / p.temperature
        prob = np.exp(s - s.max())
        budget = (p.alpha * len(arr) * prob / prob.sum()).tolist()
    return SampleResult(indices, False, resolved, allocations, budget, None, int((~in_any).sum()), dropped)
