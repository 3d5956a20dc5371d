"""Scene segmentation by histogram differences (the paper's method), with post-processing for captioning.

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_builder.video import AnalysisDecodeError, VideoReader, iter_luma_batches
from pipeline.core.config import ScenesSection
from pipeline.core.contracts import Scene, VideoInfo, VideoScenes

EDGE_BLACK_MIN_S = 1.0  # a black intro/outro shorter than this is a fade of the first/last shot


@dataclass(frozen=True)
class Boundary:
    """A scene starts at `frame`; `kind` says why; `strength` orders boundaries when short scenes are merged."""

    frame: int
    kind: str  # "cut" | "gradual" | "split"
    strength: float


@dataclass
class FrameSignals:
    """Per-frame signals of one pass: histogram difference to the previous frame, mean luma, twin-comparison runs."""

    diff: np.ndarray  # d[i] = 1 - correl(hist[i-1], hist[i]); d[0] = 0
    luma: np.ndarray  # mean luma 0-255
    dissolves: list[tuple[int, int, float]]  # (first, last, direct difference) of twin-comparison runs


def luma_histogram(luma: np.ndarray, bins: int) -> np.ndarray:
    """HistogramDetector.calculate_histogram after its BGR -> YUV step: the L2-normalised histogram of a luma image.

    The fast path hands luma straight from the decoder, so the colour conversion is skipped, not redone.
    """
    import cv2

    hist = cv2.calcHist([luma], [0], None, [bins], [0, 256])
    return cv2.normalize(hist, hist).flatten()


def frame_signals(batches: Iterable[np.ndarray], cfg: ScenesSection) -> FrameSignals:
    """One streaming pass over frame batches: the histogram-difference curve and the luma curve.

    Batches are RGB `[B, H, W, 3]` (histograms by scenedetect's own `HistogramDetector.calculate_histogram`) or
    luma `[B, H, W]`, full range, as `data_builder.video.iter_luma_batches` decodes them (`luma_histogram`).
    Memory: one batch plus two histograms (and one more while a twin-comparison run is open).
    """
    import cv2
    from scenedetect.detectors import HistogramDetector

    def rgb_hist(frame: np.ndarray, bins: int) -> np.ndarray:
        return HistogramDetector.calculate_histogram(np.ascontiguousarray(frame[..., ::-1]), bins=bins)

    diffs: list[float] = []
    lumas: list[float] = []
    dissolves: list[tuple[int, int, float]] = []
    prev_hist = None
    run_start = -1  # first frame of an open twin-comparison run
    run_base = None  # histogram of the frame before it
    track = cfg.gradual in ("dissolve", "fade+dissolve")
    centres = (np.arange(cfg.bins, dtype=np.float32) + 0.5) * (256.0 / cfg.bins)  # luma at each bin's centre
    i = 0
    for batch in batches:
        calc = rgb_hist if batch.ndim == 4 else luma_histogram
        for frame in batch:
            hist = calc(frame, cfg.bins)
            d = 0.0 if prev_hist is None else 1.0 - float(cv2.compareHist(prev_hist, hist, cv2.HISTCMP_CORREL))
            diffs.append(d)
            lumas.append(float(hist @ centres) / max(float(hist.sum()), 1e-12))  # mean luma, from the histogram
            if track and prev_hist is not None:
                if d >= cfg.dissolve_low:
                    if run_start < 0:
                        run_start, run_base = i, prev_hist
                elif run_start >= 0:
                    direct = 1.0 - float(cv2.compareHist(run_base, prev_hist, cv2.HISTCMP_CORREL))
                    dissolves.append((run_start, i - 1, direct))
                    run_start, run_base = -1, None
            prev_hist = hist
            i += 1
    if track and run_start >= 0 and prev_hist is not None:
        direct = 1.0 - float(cv2.compareHist(run_base, prev_hist, cv2.HISTCMP_CORREL))
        dissolves.append((run_start, i - 1, direct))
    return FrameSignals(np.asarray(diffs, dtype=np.float64), np.asarray(lumas, dtype=np.float64), dissolves)


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


def _split_long(starts: list[int], kinds: list[str], times: np.ndarray, n: int, end_s: float, max_len_s: float) -> tuple[list[int], list[str]]:
    """Split every scene longer than `max_len_s` into equal parts (by time)."""
    out_s, out_k = [], []
    for j, (s, kind) in enumerate(zip(starts, kinds, strict=True)):
        e = starts[j + 1] if j + 1 < len(starts) else n
        t0, t1 = float(times[s]), float(times[e]) if e < n else end_s
        out_s.append(s)
        out_k.append(kind)
        parts = int(np.ceil((t1 - t0) / max_len_s - 1e-9))
        for p in range(1, parts):
            f = int(np.searchsorted(times, t0 + p * (t1 - t0) / parts))
            if s < f < e and f > out_s[-1]:
                out_s.append(f)
                out_k.append("split")
    return out_s, out_k


def scenes_from_signals(
    sig: FrameSignals, times: np.ndarray, end_s: float, cfg: ScenesSection
) -> list[Scene]:
    """Steps 2-4 on the signals of a whole video: the final scene list (covers every frame, in order)."""
    n = len(sig.diff)
    cuts = hard_cuts(sig, cfg)
    bounds = list(cuts)
    if cfg.gradual in ("fade", "fade+dissolve"):
        bounds += fade_boundaries(sig, cuts, times, cfg)
    if cfg.gradual in ("dissolve", "fade+dissolve"):
        taken = {b.frame for b in bounds}
        bounds += [b for b in dissolve_boundaries(sig, cfg) if all(abs(b.frame - f) > 2 for f in taken)]
    best: dict[int, Boundary] = {}
    for b in bounds:  # one boundary per frame; a cut wins over a gradual one at the same frame
        if b.frame not in best or (b.kind == "cut" and best[b.frame].kind != "cut"):
            best[b.frame] = b
    kept = _merge_short(list(best.values()), times, end_s, cfg.min_scene_len_s)
    starts = [0] + [b.frame for b in kept]
    kinds = ["start"] + [b.kind for b in kept]
    if cfg.max_scene_len_s is not None:
        starts, kinds = _split_long(starts, kinds, times, n, end_s, cfg.max_scene_len_s)
    scenes = []
    for j, (s, kind) in enumerate(zip(starts, kinds, strict=True)):
        e = starts[j + 1] if j + 1 < len(starts) else n
        scenes.append(
            Scene(
                index=j,
                start_frame=s,
                end_frame=e,
                start_s=round(float(times[s]), 6),
                end_s=round(float(times[e]) if e < n else end_s, 6),
                boundary=kind,  # type: ignore[arg-type]
            )
        )
    return scenes


def _with_progress(batches: Iterable[np.ndarray], total: int, name: str, show: bool) -> Iterator[np.ndarray]:
    if not show:
        yield from batches
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=name, unit="frame", leave=False) as bar:
        for batch in batches:
            yield batch
            bar.update(len(batch))


def _decord_signals(path: Path, cfg: ScenesSection, n: int, progress: bool) -> FrameSignals:
    """The reference pass: RGB frames from decord's scaler (the random-access reader), scenedetect's histograms."""
    with VideoReader(path, width=cfg.downscale_width, num_threads=cfg.num_threads) as reader:
        frames = (f for _, f in reader.iter_batches(range(n), cfg.batch_size))
        return frame_signals(_with_progress(frames, n, path.name, progress), cfg)


def segment_video(
    path: str | os.PathLike[str], cfg: ScenesSection | None = None, *, progress: bool = False
) -> VideoScenes:
    """Decode `path` once at `downscale_width` and segment it: the video's info and its scenes.

    Frame count and presentation times come from `VideoReader` (decord's index, no decoding), so scene frames and
    times are the ones every other stage reads. Frames are decoded by `cfg.decoder`: `pyav` (default) is the
    sequential luma-only pass of `iter_luma_batches`; if it cannot read the file, or sees a different number of
    frames than the index, the pass is redone with `decord` so that frame i is always the reader's frame i.
    """
    cfg = cfg or ScenesSection()
    p = Path(path)
    with VideoReader(p, num_threads=cfg.num_threads) as reader:  # opens the index only: nothing is decoded
        info: VideoInfo = reader.info
        times = reader.timestamps_s
    n = info.num_frames
    sig = None
    if cfg.decoder == "pyav":
        try:
            lumas = iter_luma_batches(p, cfg.downscale_width, cfg.batch_size, num_threads=cfg.num_threads,
                                      skip_loop_filter=cfg.skip_loop_filter)
            sig = frame_signals(_with_progress(lumas, n, p.name, progress), cfg)
        except AnalysisDecodeError:
            sig = None
        if sig is not None and len(sig.diff) != n:
            sig = None
    if sig is None:
        sig = _decord_signals(p, cfg, n, progress)
    return VideoScenes(video=info, scenes=scenes_from_signals(sig, times, info.duration_s, cfg))


def detect_scenes(path: str | os.PathLike[str], cfg: ScenesSection | None = None) -> list[Scene]:
    """The scenes of a video (see the module docstring for the method and its defaults)."""
    return segment_video(path, cfg).scenes
