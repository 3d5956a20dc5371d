"""Scene segmentation by histogram differences (the paper's method), with post-processing for captioning.

Three detectors (`ScenesSection.detector`), all ending in the same post-processing (step 4):
- `histogram` (default): steps 1-3 below; exact on hard cuts and fades through black, blind to most dissolves.
- `transnetv2`: TransNetV2's transitions over every frame (`data_builder.transnet`), cuts and gradual ones;
  about real time on two CPU cores, far slower than the histogram.
- `hybrid`: the histogram's hard cuts and fades, plus TransNetV2's gradual transitions, with TransNetV2 run only
  on the stretches where the histogram signal leaves a doubt (step 5). Every boundary records what found it
  (`Scene.found_by`).

Pipeline, one pass over every frame of the video at reduced size (`ScenesSection.downscale_width`). By default the
pass is `data_builder.video.iter_luma_batches` (PyAV): the decoder's own luma plane, deblocking skipped, no RGB
conversion; about 2x scenedetect's throughput (README "## Scenes"). `decoder: decord` reads RGB frames from the
random-access reader instead (the reference; the tests check both give the same scenes). Frame indices and times
always come from the reader (decord's index), and the fast pass falls back to decord if it sees other frames.

1. **Histogram difference.** For every frame, scenedetect's own `HistogramDetector.calculate_histogram` (luma
   histogram, `bins`; `luma_histogram` is the same function after its BGR -> YUV step, for luma frames) and the
   detector's metric `d = 1 - correlation(previous, current)`. A frame with `d >= threshold` is a cut candidate:
   exactly `HistogramDetector(threshold, bins, min_scene_len=1)`'s cuts (a test checks this). We keep the whole curve `d` instead of the detector's yes/no, because steps 2-3 need it.
2. **Adaptive check** (as in scenedetect's AdaptiveDetector): a candidate must also be `adaptive_ratio` times the
   mean `d` of its `adaptive_window` neighbours on each side. Sustained change (camera motion, flat-colour fades,
   dissolves) has a high `d` on many consecutive frames and is not a cut; a real cut is an isolated spike.
3. **Gradual transitions** (`gradual`):
   - `fade`: a candidate next to a black frame (mean luma < `fade_luma`) whose brightness changed by less than
     `fade_max_step` is part of a fade, not a cut. Each run of black frames then gives at most one `gradual`
     boundary: at its middle for fade-out -> black -> fade-in, at its end for cut -> black -> fade-in, at its start
     for fade-out -> black -> cut; none when both ends are hard cuts (they already bound it).
   - `dissolve`: twin comparison (Zhang et al., 1993): a run of frames with `d >= dissolve_low`, at least
     `dissolve_min_frames` long, whose first and last frames differ by `threshold` or more (histograms compared
     directly), is one `gradual` boundary at its middle; a cut candidate inside it must be `adaptive_ratio` times
     the run's median `d` to stay a cut. Off by default: a camera pan looks the same to a luma histogram.
4. **Length limits.** Scenes shorter than `min_scene_len_s` are merged into a neighbour across their weaker
   boundary (the one with the smaller evidence), so a flash frame or a half-second black gap does not become a
   scene to caption. Scenes longer than `max_scene_len_s` are split into equal parts (`split` boundaries): the
   captioner sees a fixed number of frames per scene, and a five-minute "scene" would be captioned from 4 frames.

5. **Doubts** (`hybrid`). The histogram is sure where content stands still (no accumulated change) and where a
   change is explained by a hard cut or a run of black frames (a fade). Elsewhere a large accumulated change,
   `1 - correlation(hist[i - K], hist[i]) >= doubt_threshold` over K = `doubt_window_s` seconds, is motion or a
   gradual transition. A stretch whose frames are not cross-fades of its two ends (`blend_residual` above
   `doubt_max_residual`, on 32-pixel-wide luma thumbnails kept by the pass) is motion: a dissolve is exactly such
   a blend, a pan or a moving subject is not. The rest is in doubt, and TransNetV2 decides: it runs on those frames
   (widened to its 100-frame windows) and its gradual transitions there become `gradual` boundaries; its cuts are
   not used (the histogram's are exact), nor anything next to a boundary already found or to black frames (the
   fade logic's). TransNetV2 costs about 30 times the histogram per frame on CPU, so what the hybrid costs is set
   by how many frames are in doubt: none for static shots, cuts and fades, a 100-frame window per dissolve.

Times come from the reader's presentation timestamps, so scene times are right on variable-frame-rate video.
Why these defaults (bench numbers in README "## Scenes"): threshold 0.15 sits between the weakest true cut of the
test videos (bikes: 0.25 on decord's RGB frames, 0.22 on the luma pass) and the strongest non-cut frame (0.11;
0.13); ratio 3 and window 2 are AdaptiveDetector's; luma 16 is ThresholdDetector's black level (12) plus margin
for compression noise; 0.3 s keeps every real shot of the test videos (the shortest, bikes' last, is 0.32 s) while
dropping flash frames and black gaps of a few frames.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_builder import transnet as tn
from data_builder.video import AnalysisDecodeError, VideoReader, iter_luma_batches
from pipeline.core.config import ScenesSection
from pipeline.core.contracts import Scene, VideoInfo, VideoScenes

EDGE_BLACK_MIN_S = 1.0  # a black intro/outro shorter than this is a fade of the first/last shot
DOUBT_MARGIN = 5  # frames of a doubtful stretch's surroundings TransNetV2 also predicts (a transition's tails)
NEAR = 2  # frames: a boundary this close to another one is the same transition
SMALL_WIDTH = 32  # luma thumbnails kept by the hybrid's pass for the blend test (576 bytes a frame at 16:9)


@dataclass(frozen=True)
class Boundary:
    """A scene starts at `frame`; `kind` says why, `found_by` which detector; `strength` orders boundaries when
    short scenes are merged."""

    frame: int
    kind: str  # "cut" | "gradual" | "split"
    strength: float
    found_by: str = "histogram"  # "histogram" | "transnetv2"


@dataclass
class FrameSignals:
    """Per-frame signals of one pass: histogram difference to the previous frame (and to the frame K back), mean
    luma, twin-comparison runs."""

    diff: np.ndarray  # d[i] = 1 - correl(hist[i-1], hist[i]); d[0] = 0
    luma: np.ndarray  # mean luma 0-255
    dissolves: list[tuple[int, int, float]]  # (first, last, direct difference) of twin-comparison runs
    span_diff: np.ndarray | None = None  # D[i] = 1 - correl(hist[i-K], hist[i]) (0 for i < K); hybrid only
    span: int = 0  # K
    small: np.ndarray | None = None  # uint8 luma thumbnails [n, h, SMALL_WIDTH] for the blend test; hybrid only


def luma_histogram(luma: np.ndarray, bins: int) -> np.ndarray:
    """HistogramDetector.calculate_histogram after its BGR -> YUV step: the L2-normalised histogram of a luma image.

    The fast path hands luma straight from the decoder, so the colour conversion is skipped, not redone.
    """
    import cv2

    hist = cv2.calcHist([luma], [0], None, [bins], [0, 256])
    return cv2.normalize(hist, hist).flatten()


def _correl(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise `cv2.compareHist(a, b, HISTCMP_CORREL)` (same formula, in float64; 1 where a row is constant)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    n = a.shape[-1]
    sa, sb = a.sum(-1), b.sum(-1)
    num = (a * b).sum(-1) - sa * sb / n
    den = ((a * a).sum(-1) - sa * sa / n) * ((b * b).sum(-1) - sb * sb / n)
    ok = np.abs(den) > np.finfo(np.float64).eps
    return np.where(ok, num / np.sqrt(np.where(ok, den, 1.0)), 1.0)


def _batch_histograms(batch: np.ndarray, bins: int) -> np.ndarray:
    """L2-normalised luma histograms `[B, bins]` of a batch: scenedetect's own function on RGB frames (its BGR ->
    YUV step included), `cv2.calcHist` on luma frames, normalised together."""
    import cv2

    if batch.ndim == 4:
        from scenedetect.detectors import HistogramDetector

        return np.stack([HistogramDetector.calculate_histogram(np.ascontiguousarray(f[..., ::-1]), bins=bins) for f in batch])
    counts = np.stack([cv2.calcHist([f], [0], None, [bins], [0, 256]).ravel() for f in batch])
    norms = np.sqrt((counts.astype(np.float64) ** 2).sum(1, keepdims=True))
    return (counts / np.maximum(norms, 1e-12)).astype(np.float32)


def _small(batch: np.ndarray) -> np.ndarray:
    """Luma thumbnails `[B, h, SMALL_WIDTH]` (area mean) of a luma or RGB batch."""
    import cv2

    h, w = batch.shape[1:3]
    size = (SMALL_WIDTH, max(2, int(round(SMALL_WIDTH * h / w))))
    out = []
    for f in batch:
        y = cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) if f.ndim == 3 else f
        out.append(cv2.resize(y, size, interpolation=cv2.INTER_AREA))
    return np.stack(out)


def tracks_dissolves(cfg: ScenesSection) -> bool:
    """Whether the histogram pass follows dissolves itself (twin comparison), which wants noise-averaged frames."""
    return cfg.gradual in ("dissolve", "fade+dissolve")


def frame_signals(batches: Iterable[np.ndarray], cfg: ScenesSection, *, span: int = 0) -> FrameSignals:
    """One streaming pass over frame batches: the histogram-difference curve, the luma curve (and with `span` K > 0
    the difference to the frame K back and small luma thumbnails, for the hybrid's doubts).

    Batches are RGB `[B, H, W, 3]` (histograms by scenedetect's own `HistogramDetector.calculate_histogram`) or
    luma `[B, H, W]`, full range, as `data_builder.video.iter_luma_batches` decodes them (`luma_histogram`). The
    metric is `cv2.compareHist`'s correlation, computed for a whole batch at once (per-frame Python calls were
    most of the cost after decoding). Memory: one batch plus the K + 1 histograms before it, and with `span` a
    thumbnail per frame (576 bytes at 16:9: 62 MB for an hour at 30 fps).
    """
    diffs: list[np.ndarray] = []
    lumas: list[np.ndarray] = []
    spans: list[np.ndarray] = []
    smalls: list[np.ndarray] = []
    dissolves: list[tuple[int, int, float]] = []
    keep = max(span, 1)
    carry = np.zeros((0, cfg.bins), np.float32)  # the last `keep` histograms of the previous batches
    run_start = -1  # first frame of an open twin-comparison run
    run_base = None  # histogram of the frame before it
    track = tracks_dissolves(cfg)
    centres = (np.arange(cfg.bins, dtype=np.float64) + 0.5) * (256.0 / cfg.bins)  # luma at each bin's centre
    i = 0  # index of the batch's first frame
    for batch in batches:
        if len(batch) == 0:
            continue
        hists = _batch_histograms(batch, cfg.bins)
        both = np.concatenate([carry, hists])
        off = len(carry)
        d = np.zeros(len(hists))
        if off:
            d[:] = 1.0 - _correl(both[off - 1 : -1], hists)
        else:
            d[1:] = 1.0 - _correl(hists[:-1], hists[1:])
        diffs.append(d)
        lumas.append((hists @ centres) / np.maximum(hists.sum(1), 1e-12))  # mean luma, from the histogram
        if span:
            far = np.zeros(len(hists))
            idx = np.arange(i, i + len(hists))
            has = idx >= span
            if has.any():
                far[has] = 1.0 - _correl(both[off + np.nonzero(has)[0] - span], hists[has])
            spans.append(far)
            smalls.append(_small(batch))
        if track:
            for k, dk in enumerate(d.tolist()):
                f = i + k
                if f == 0:
                    continue
                if dk >= cfg.dissolve_low:
                    if run_start < 0:
                        run_start, run_base = f, both[off + k - 1]
                elif run_start >= 0:
                    direct = 1.0 - float(_correl(run_base, both[off + k - 1]))
                    dissolves.append((run_start, f - 1, direct))
                    run_start, run_base = -1, None
        carry = both[-keep:]
        i += len(hists)
    if track and run_start >= 0 and len(carry):
        dissolves.append((run_start, i - 1, 1.0 - float(_correl(run_base, carry[-1]))))
    cat = (lambda xs: np.concatenate(xs) if xs else np.zeros(0))
    if not span:
        return FrameSignals(cat(diffs), cat(lumas), dissolves)
    small = np.concatenate(smalls) if smalls else np.zeros((0, 2, SMALL_WIDTH), np.uint8)
    return FrameSignals(cat(diffs), cat(lumas), dissolves, cat(spans), span, small)


def _is_fade_step(i: int, luma: np.ndarray, cfg: ScenesSection) -> bool:
    """Frame i changes only a little in brightness, next to black: a step of a fade, not a cut."""
    lo = min(luma[i - 1], luma[i])
    return bool(lo < cfg.fade_luma and abs(luma[i] - luma[i - 1]) < cfg.fade_max_step)


def _dissolve_runs(sig: FrameSignals, cfg: ScenesSection) -> list[tuple[int, int, float]]:
    """Twin-comparison runs long enough, whose first and last frames differ by at least `threshold`."""
    if cfg.gradual not in ("dissolve", "fade+dissolve"):
        return []
    return [(s, e, direct) for s, e, direct in sig.dissolves if e - s + 1 >= cfg.dissolve_min_frames and direct >= cfg.threshold]


def hard_cuts(sig: FrameSignals, cfg: ScenesSection) -> list[Boundary]:
    """Steps 1-2 (and the fade and dissolve tests of step 3): frames where a new shot starts abruptly."""
    d, n = sig.diff, len(sig.diff)
    fades = cfg.gradual in ("fade", "fade+dissolve")
    runs = _dissolve_runs(sig, cfg)
    ratio = cfg.adaptive_ratio or 1.0
    out = []
    for i in np.nonzero(d >= cfg.threshold)[0].tolist():
        if i == 0:
            continue
        if cfg.adaptive_ratio is not None:
            w = cfg.adaptive_window
            neigh = np.concatenate([d[max(1, i - w) : i], d[i + 1 : min(n, i + w + 1)]])
            if neigh.size and d[i] < cfg.adaptive_ratio * float(neigh.mean()):
                continue
        if fades and _is_fade_step(i, sig.luma, cfg):
            continue
        # Inside a dissolve, only a spike well above the dissolve's own level is a cut.
        if any(s <= i <= e and d[i] < ratio * float(np.median(d[s : e + 1])) for s, e, _ in runs):
            continue
        out.append(Boundary(i, "cut", float(d[i])))
    return out


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.nonzero(edges == 1)[0].tolist(), np.nonzero(edges == -1)[0].tolist(), strict=True))


def fade_boundaries(sig: FrameSignals, cuts: list[Boundary], times: np.ndarray, cfg: ScenesSection) -> list[Boundary]:
    """Step 3, fades: at most one gradual boundary per run of black frames (see the module docstring)."""
    n = len(sig.luma)
    cut_frames = {b.frame for b in cuts}
    out = []
    for a, b in _runs(sig.luma < cfg.fade_luma):
        # A hard cut into the black run lands on its first frame (or within a frame); out of it, on its end.
        cut_in = a == 0 or any(f in cut_frames for f in (a, a + 1))
        cut_out = b == n or any(f in cut_frames for f in (b, b - 1, b + 1))
        if a == 0 and b == n:
            continue  # an all-black video
        if a == 0 or b == n:
            # A fade in from black at the start (out to black at the end) belongs to the first (last) shot; only
            # a black intro/outro of its own (>= EDGE_BLACK_MIN_S) gets a boundary.
            long_enough = float(times[min(b, n - 1)] - times[a]) >= EDGE_BLACK_MIN_S
            if a == 0:
                frame = b if long_enough and not cut_out else None
            else:
                frame = a if long_enough and not cut_in else None
        elif not cut_in and not cut_out:
            frame = (a + b) // 2  # fade-out -> black -> fade-in: one transition, at the middle of the black
        elif cut_in and not cut_out:
            frame = b  # cut to black, then fade in: the black is its own shot
        elif cut_out and not cut_in:
            frame = a  # fade out to black, then cut
        else:
            frame = None
        if frame is not None and 0 < frame < n:
            out.append(Boundary(frame, "gradual", 1.0))
    return out


def dissolve_boundaries(sig: FrameSignals, cfg: ScenesSection) -> list[Boundary]:
    """Step 3, dissolves: one gradual boundary at the middle of each qualifying twin-comparison run."""
    return [Boundary((s + e + 1) // 2, "gradual", direct) for s, e, direct in _dissolve_runs(sig, cfg)]


def _merge_short(bounds: list[Boundary], times: np.ndarray, end_s: float, min_len_s: float) -> list[Boundary]:
    """Drop boundaries until every scene lasts at least `min_len_s`: a short scene loses its weaker boundary."""
    bounds = sorted(bounds, key=lambda b: b.frame)

    def start(k: int) -> float:  # start time of scene k (scene 0 starts at the first frame)
        return float(times[bounds[k - 1].frame]) if k > 0 else float(times[0])

    def end(k: int) -> float:
        return float(times[bounds[k].frame]) if k < len(bounds) else end_s

    while bounds:
        lengths = [end(k) - start(k) for k in range(len(bounds) + 1)]
        k = int(np.argmin(lengths))
        if lengths[k] >= min_len_s:
            break
        # scene k is bounded by bounds[k-1] (its start) and bounds[k] (its end)
        left = bounds[k - 1] if k > 0 else None
        right = bounds[k] if k < len(bounds) else None
        if left is None or (right is not None and right.strength < left.strength):
            bounds.remove(right)
        else:
            bounds.remove(left)
    return bounds


def _split_long(starts: list[int], marks: list[tuple[str, str | None]], times: np.ndarray, n: int, end_s: float,
                max_len_s: float) -> tuple[list[int], list[tuple[str, str | None]]]:
    """Split every scene longer than `max_len_s` into equal parts (by time); `marks` are (kind, found_by)."""
    out_s: list[int] = []
    out_m: list[tuple[str, str | None]] = []
    for j, (s, mark) in enumerate(zip(starts, marks, strict=True)):
        e = starts[j + 1] if j + 1 < len(starts) else n
        t0, t1 = float(times[s]), float(times[e]) if e < n else end_s
        out_s.append(s)
        out_m.append(mark)
        parts = int(np.ceil((t1 - t0) / max_len_s - 1e-9))
        for p in range(1, parts):
            f = int(np.searchsorted(times, t0 + p * (t1 - t0) / parts))
            if s < f < e and f > out_s[-1]:
                out_s.append(f)
                out_m.append(("split", None))
    return out_s, out_m


def histogram_boundaries(sig: FrameSignals, times: np.ndarray, cfg: ScenesSection, *, dissolves: bool = True) -> list[Boundary]:
    """Steps 1-3: hard cuts, fades (and twin-comparison dissolves when `dissolves` and `cfg.gradual` ask)."""
    cuts = hard_cuts(sig, cfg)
    bounds = list(cuts)
    if cfg.gradual in ("fade", "fade+dissolve"):
        bounds += fade_boundaries(sig, cuts, times, cfg)
    if dissolves and tracks_dissolves(cfg):
        taken = {b.frame for b in bounds}
        bounds += [b for b in dissolve_boundaries(sig, cfg) if all(abs(b.frame - f) > NEAR for f in taken)]
    return bounds


def scenes_from_boundaries(bounds: list[Boundary], times: np.ndarray, n: int, end_s: float, cfg: ScenesSection) -> list[Scene]:
    """Step 4: one boundary per frame, short scenes merged, long ones split; the scene list (covers every frame)."""
    best: dict[int, Boundary] = {}
    for b in bounds:  # one boundary per frame; a cut wins over a gradual one at the same frame
        if not 0 < b.frame < n:
            continue
        if b.frame not in best or (b.kind == "cut" and best[b.frame].kind != "cut"):
            best[b.frame] = b
    kept = _merge_short(list(best.values()), times, end_s, cfg.min_scene_len_s)
    starts = [0] + [b.frame for b in kept]
    marks: list[tuple[str, str | None]] = [("start", None)] + [(b.kind, b.found_by) for b in kept]
    if cfg.max_scene_len_s is not None:
        starts, marks = _split_long(starts, marks, times, n, end_s, cfg.max_scene_len_s)
    scenes = []
    for j, (s, (kind, found_by)) in enumerate(zip(starts, marks, strict=True)):
        e = starts[j + 1] if j + 1 < len(starts) else n
        scenes.append(
            Scene(
                index=j,
                start_frame=s,
                end_frame=e,
                start_s=round(float(times[s]), 6),
                end_s=round(float(times[e]) if e < n else end_s, 6),
                boundary=kind,  # type: ignore[arg-type]
                found_by=found_by,  # type: ignore[arg-type]
            )
        )
    return scenes


def scenes_from_signals(sig: FrameSignals, times: np.ndarray, end_s: float, cfg: ScenesSection) -> list[Scene]:
    """Steps 2-4 on the signals of a whole video (the `histogram` detector): the final scene list."""
    return scenes_from_boundaries(histogram_boundaries(sig, times, cfg), times, len(sig.diff), end_s, cfg)


# -- hybrid: TransNetV2 where the histogram leaves a doubt -------------------------------------------------------------


def doubt_window(info: VideoInfo, cfg: ScenesSection) -> int:
    """K, the frames `doubt_window_s` spans at the video's rate (at least 2)."""
    return max(2, int(round(cfg.doubt_window_s * info.fps)))


def _near_black(sig: FrameSignals, cfg: ScenesSection) -> np.ndarray:
    """Frames within NEAR of a black frame, when fades are the fade logic's (else nothing)."""
    if cfg.gradual not in ("fade", "fade+dissolve"):
        return np.zeros(len(sig.luma), bool)
    black = (sig.luma < cfg.fade_luma).astype(np.int32)
    return np.convolve(black, np.ones(2 * NEAR + 1, np.int32), mode="same") > 0


def blend_residual(small: np.ndarray, start: int, stop: int) -> float:
    """How far frames `[start, stop)` are from blends of the frames just outside (a dissolve's model): the mean,
    over the frames, of `|f - A - a (B - A)| / |B - A|` with the best `a` per frame (0: a perfect cross-fade; about
    1: no relation). Infinite when the two ends are the same picture (no change across the stretch to explain)."""
    n = len(small)
    a_img = small[max(start - 1, 0)].astype(np.float64).ravel()
    b_img = small[min(stop, n - 1)].astype(np.float64).ravel()
    delta = b_img - a_img
    norm2 = float(delta @ delta)
    if norm2 < (2.0**2) * delta.size:  # ends within 2 grey levels (RMS) of each other
        return float("inf")
    x = small[start:stop].reshape(stop - start, -1).astype(np.float64) - a_img
    alpha = (x @ delta) / norm2
    resid = np.linalg.norm(x - alpha[:, None] * delta[None, :], axis=1) / np.sqrt(norm2)
    return float(resid.mean())


def doubt_spans(sig: FrameSignals, cuts: list[Boundary], cfg: ScenesSection) -> list[tuple[int, int]]:
    """Step 5: `[start, stop)` stretches where the histogram cannot tell a gradual transition from motion.

    Frame i changed a lot when the change over the K frames before it is large (`span_diff >= doubt_threshold`);
    that change is explained when a hard cut or a black frame lies in those K frames. Runs of unexplained change,
    each widened to the K frames before it (where the change happened), are candidate stretches. A stretch within K
    frames of black is the tail of a fade (the fade logic's), and one whose frames are not blends of its two ends
    (`blend_residual > doubt_max_residual`: camera or object motion, which a cross-fade is not) is no doubt either.
    """
    if sig.span_diff is None or sig.small is None:
        raise ValueError("doubt_spans needs frame_signals(..., span=K)")
    k, n = sig.span, len(sig.diff)
    cut_at = np.zeros(n, np.int32)
    for b in cuts:
        cut_at[b.frame] += 1
    black = _near_black(sig, cfg)
    cum_cut, cum_black = np.cumsum(cut_at), np.cumsum(black.astype(np.int32))
    idx = np.arange(n)
    lo = np.maximum(idx - k, 0) - 1  # count over [i-K, i] = cum[i] - cum[i-K-1]

    def in_window(cum: np.ndarray) -> np.ndarray:
        return cum - np.where(lo >= 0, cum[np.maximum(lo, 0)], 0)

    change = (sig.span_diff >= cfg.doubt_threshold) & (idx >= k) & (in_window(cum_cut) == 0) & (in_window(cum_black) == 0)
    stretches: list[tuple[int, int]] = []
    for a, b in _runs(change):
        a = max(0, a - k)
        if stretches and a <= stretches[-1][1]:
            stretches[-1] = (stretches[-1][0], b)
        else:
            stretches.append((a, b))
    out = []
    for a, b in stretches:
        if black[max(0, a - k) : min(n, b + k)].any():
            continue
        if blend_residual(sig.small, a, b) > cfg.doubt_max_residual:
            continue
        out.append((a, b))
    return out


def transnet_boundaries(pred: tn.Predictions, cfg: ScenesSection) -> list[Boundary]:
    """TransNetV2's transitions as boundaries (the `transnetv2` detector): cuts and gradual ones."""
    return [Boundary(t.frame, t.kind, t.score, "transnetv2") for t in tn.transitions(pred, cfg.transnet_threshold)]


def hybrid_boundaries(sig: FrameSignals, pred: tn.Predictions, times: np.ndarray, cfg: ScenesSection) -> list[Boundary]:
    """The histogram's cuts and fades, plus TransNetV2's gradual transitions that neither explains: not within
    NEAR frames of a histogram boundary, not touching black frames (a fade through black, the fade logic's)."""
    bounds = histogram_boundaries(sig, times, cfg, dissolves=False)
    black = _near_black(sig, cfg)
    taken = [b.frame for b in bounds]
    for t in tn.transitions(pred, cfg.transnet_threshold):
        if t.kind != "gradual" or black[t.first : t.last + 1].any():
            continue
        if any(t.first - NEAR <= f <= t.last + NEAR for f in taken):
            continue
        bounds.append(Boundary(t.frame, "gradual", t.score, "transnetv2"))
        taken.append(t.frame)
    return bounds


# -- one video ---------------------------------------------------------------------------------------------------------


def _with_progress(batches: Iterable[np.ndarray], total: int, name: str, show: bool) -> Iterator[np.ndarray]:
    if not show:
        yield from batches
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=name, unit="frame", leave=False) as bar:
        for batch in batches:
            yield batch
            bar.update(len(batch))


def _decord_signals(path: Path, cfg: ScenesSection, n: int, progress: bool, span: int) -> FrameSignals:
    """The reference pass: RGB frames from decord's scaler (the random-access reader), scenedetect's histograms."""
    with VideoReader(path, width=cfg.downscale_width, num_threads=cfg.num_threads) as reader:
        frames = (f for _, f in reader.iter_batches(range(n), cfg.batch_size))
        return frame_signals(_with_progress(frames, n, path.name, progress), cfg, span=span)


def _fast_signals(p: Path, cfg: ScenesSection, total: int | None, progress: bool, span: int) -> FrameSignals | None:
    """The sequential luma pass (`decoder: pyav`), or None when it cannot read the file (decord takes over)."""
    if cfg.decoder != "pyav":
        return None
    try:
        lumas = iter_luma_batches(p, cfg.downscale_width, cfg.batch_size, num_threads=cfg.num_threads,
                                  skip_loop_filter=cfg.skip_loop_filter, smooth=tracks_dissolves(cfg))
        return frame_signals(_with_progress(lumas, total or 0, p.name, progress), cfg, span=span)
    except AnalysisDecodeError:
        return None


def _index(p: Path, cfg: ScenesSection) -> tuple[VideoInfo, np.ndarray]:
    with VideoReader(p, num_threads=cfg.num_threads) as reader:  # opens the index only: nothing is decoded
        return reader.info, reader.timestamps_s


def _transnet(p: Path, n: int, spans: list[tuple[int, int]] | None, cfg: ScenesSection, progress: bool) -> tn.Predictions:
    """TransNetV2's predictions for `spans` of the video (all frames when None), frames from `VideoReader`."""
    read, close = tn.video_reader_frames(p, cfg.num_threads)
    bar = None
    if progress:
        from tqdm import tqdm

        total = sum(b - a for a, b in tn.window_spans([(0, n)] if spans is None else spans, n))
        bar = tqdm(total=total, desc=f"{p.name} transnetv2", unit="frame", leave=False)
    try:
        return tn.predict(read, n, spans, device=cfg.transnet_device, batch_windows=cfg.transnet_batch,
                          progress=bar.update if bar is not None else None)
    finally:
        close()
        if bar is not None:
            bar.close()


def segment_video(
    path: str | os.PathLike[str], cfg: ScenesSection | None = None, *, progress: bool = False
) -> VideoScenes:
    """Segment `path` with `cfg.detector`: the video's info and its scenes.

    Frame count and presentation times come from `VideoReader` (decord's index, no decoding), so scene frames and
    times are the ones every other stage reads; the index is opened on a second thread while the histogram pass
    decodes (both wait mostly in native code). The histogram pass decodes every frame once at `downscale_width`
    with `cfg.decoder`: `pyav` (default) is the sequential luma-only pass of `iter_luma_batches`; if it cannot read
    the file, or sees a different number of frames than the index, the pass is redone with `decord` so that frame i
    is always the reader's frame i. TransNetV2 reads its frames from `VideoReader` (`data_builder.transnet`).
    """
    cfg = cfg or ScenesSection()
    p = Path(path)
    if cfg.detector == "transnetv2":
        info, times = _index(p, cfg)
        pred = _transnet(p, info.num_frames, None, cfg, progress)
        bounds = transnet_boundaries(pred, cfg)
        return VideoScenes(video=info, scenes=scenes_from_boundaries(bounds, times, info.num_frames, info.duration_s, cfg))

    with ThreadPoolExecutor(max_workers=1) as pool:
        index = pool.submit(_index, p, cfg)
        span, total = 0, None
        if cfg.detector == "hybrid" or progress:  # K needs the frame rate; a progress bar, the frame count
            info, times = index.result()
            span, total = (doubt_window(info, cfg) if cfg.detector == "hybrid" else 0), info.num_frames
        sig = _fast_signals(p, cfg, total, progress, span)
        info, times = index.result()  # a file the reader cannot open: its error is the one reported
    n = info.num_frames
    if sig is None or len(sig.diff) != n:
        sig = _decord_signals(p, cfg, n, progress, span)
    if cfg.detector == "histogram":
        return VideoScenes(video=info, scenes=scenes_from_signals(sig, times, info.duration_s, cfg))
    spans = doubt_spans(sig, hard_cuts(sig, cfg), cfg)
    if spans:
        pred = _transnet(p, n, [(max(0, a - DOUBT_MARGIN), min(n, b + DOUBT_MARGIN)) for a, b in spans], cfg, progress)
        bounds = hybrid_boundaries(sig, pred, times, cfg)
    else:
        bounds = histogram_boundaries(sig, times, cfg, dissolves=False)
    return VideoScenes(video=info, scenes=scenes_from_boundaries(bounds, times, n, info.duration_s, cfg))


def detect_scenes(path: str | os.PathLike[str], cfg: ScenesSection | None = None) -> list[Scene]:
    """The scenes of a video (see the module docstring for the method and its defaults)."""
    return segment_video(path, cfg).scenes
