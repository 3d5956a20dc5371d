"""Video decoding: file metadata, frames at given indices in keyframe-group order, candidate frames.

Everything downstream (scene segmentation, captions, SFT batches, the GRPO reward, inference, evaluation) reads
video through this module, so four things are decided once, here:

- **Time.** A frame's time is its presentation timestamp from the stream, not `index / fps`. Variable-frame-rate
  files (phone videos, screen recordings, files with dropped frames) would otherwise drift by seconds, and every
  `<t=...s>` the selector sees, and every clip it predicts, would point at the wrong frame.
- **Cost.** Reaching frame i means decoding from the keyframe before it. `VideoReader` decodes the frames asked for
  in keyframe-group order with PyAV: each needed group is entered once (one seek), decoded up to the last frame
  wanted from it, and a group that the previous request already entered is continued without a seek. That is the
  floor for exact frames (README "## Video I/O" measures it); decord's `get_batch` costs 1.5-3x more.
- **Memory and idleness.** Frames are decoded only for the indices asked for; nothing holds a whole video, and no
  decoder works after a call returns. (decord's reader keeps decoding ahead on a thread after `get_batch`, growing
  by gigabytes on long videos, until it is told `seek(0)`; decord is used here for the frame index only, and as
  the fallback decoder for files PyAV cannot index, always followed by `seek(0)`.)
- **Size.** Frames are resized in the conversion from the decoder's YUV (`width=` or `max_pixels=`), bilinear as
  decord's scaler, which is much cheaper than converting at full resolution and resizing afterwards.

Scene detection alone reads every frame once, in order, and needs only luma: `iter_luma_batches` is a separate
sequential decoder for it (PyAV, luma plane only, cheaper decoding); everything else reads through `VideoReader`.

Rotation: decord (>= 0.6) applies the stream's rotation side-data when decoding, and the PyAV decoder applies the
frame's display matrix the same way, so frames come out upright and `VideoInfo.width/height` are the displayed
(rotated) size; `VideoInfo.rotation` records the rotation (degrees) that was applied, read with OpenCV.

Bad input (a missing file, a file that is not a video, a truncated or zero-frame video, an index past the end)
raises `pipeline.core.errors.VideoError` naming the file and the problem.
"""

from __future__ import annotations

import bisect
import logging
import math
import os
import re
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.core.contracts import VideoInfo
from pipeline.core.errors import VideoError

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".ts")


def _check_file(path: Path) -> None:
    if not path.exists():
        raise VideoError(f"{path}: no such file")
    if not path.is_file():
        raise VideoError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: empty file (0 bytes), not a video")


def _decoder_message(exc: BaseException) -> str:
    """decord's error text without its build paths and log timestamps."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"^\[[\d:]+\]\s+\S+:\d+:\s*", "", text)
    if "Check failed" in text:
        text = text.rsplit(")", 1)[-1].strip() or text
    return text


_STDERR_LOCK = threading.Lock()


@contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Silence decord's native error log while a file is opened: a failure becomes one VideoError line instead.

    decord prints `ERROR opening: ...` from C++ straight to file descriptor 2, so only an fd-level redirect hides
    it. It lasts for the open only (milliseconds). Set KFRAMES_DECODER_LOGS=1 to see the decoder's own messages.
    """
    if os.environ.get("KFRAMES_DECODER_LOGS") == "1":
        yield
        return
    with _STDERR_LOCK:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):  # no usable fd 2 (embedded interpreter): nothing to hide
            yield
            return
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)


def _open_decord(path: Path, *, width: int = -1, height: int = -1, num_threads: int = 1) -> Any:
    """A decord.VideoReader, or a VideoError saying why the file cannot be read."""
    import decord

    _check_file(path)
    try:
        with _quiet_native_stderr():
            vr = decord.VideoReader(str(path), ctx=decord.cpu(0), width=width, height=height, num_threads=num_threads)
    except (RuntimeError, decord.DECORDError) as exc:
        message = _decoder_message(exc)
        if "cannot find video stream" in message:
            raise VideoError(f"{path}: no video stream in the file (zero frames)") from None
        if "av_read_frame" in message:  # the index opened but the media data behind it is missing
            raise VideoError(f"{path}: truncated video (or corrupt): a frame listed in its index cannot be read") from None
        if _container_probe(path).declared_frames == 0 and "buffer source" in message:
            raise VideoError(f"{path}: video has zero frames") from None
        raise VideoError(
            f"{path}: cannot be read as a video (not a video file, or truncated/corrupt; decoder: {message})"
        ) from None
    if len(vr) == 0:
        raise VideoError(f"{path}: video has zero frames")
    return vr


@dataclass(frozen=True)
class _Container:
    """What OpenCV reads from the container without decoding: zeros where it cannot tell."""

    rotation: int = 0
    declared_frames: int = 0
    width: int = 0  # displayed (after rotation)
    height: int = 0


def _container_probe(path: Path) -> _Container:
    """Rotation, declared frame count and displayed size, read with OpenCV (no frame is decoded)."""
    try:
        import cv2

        with _quiet_native_stderr():  # OpenCV's FFmpeg logs its own complaint about a broken file
            cap = cv2.VideoCapture(str(path))
        try:
            if not cap.isOpened():
                return _Container()
            rotation = int(round(cap.get(cv2.CAP_PROP_ORIENTATION_META) or 0.0)) % 360
            declared = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
            # With auto-orientation OpenCV reports the displayed size, as decord decodes it; without, the stored one.
            if rotation in (90, 270) and not cap.get(cv2.CAP_PROP_ORIENTATION_AUTO):
                w, h = h, w
        finally:
            cap.release()
    except Exception:  # OpenCV missing or built without these properties: every use has a fallback
        return _Container()
    return _Container(rotation, max(declared, 0), max(w, 0), max(h, 0))


def _check_complete(path: Path, readable: int, declared: int) -> None:
    """A truncated file often still opens: the decoder then sees only the frames that survived. Say so."""
    if declared > 0 and readable < declared - max(2, int(0.02 * declared)):
        raise VideoError(
            f"{path}: truncated video: the container declares {declared} frames but only {readable} can be decoded"
        )


def _frame_times(vr: Any, path: Path) -> tuple[np.ndarray, float]:
    """(start time of every frame in seconds, end time of the last frame) from the stream's presentation times."""
    n = len(vr)
    try:
        spans = np.asarray(vr.get_frame_timestamp(np.arange(n)), dtype=np.float64).reshape(n, 2)
    except Exception as exc:  # decord raises its own error types for broken indexes
        raise VideoError(f"{path}: cannot read frame timestamps ({exc})") from None
    starts = np.round(spans[:, 0], 6)
    end = float(np.round(spans[-1, 1], 6))
    fps = float(vr.get_avg_fps() or 0.0)
    if not np.all(np.isfinite(starts)) or (n > 1 and np.any(np.diff(starts) <= 0)):
        # Broken presentation times: fall back to the nominal rate rather than hand out unordered times.
        if fps <= 0:
            raise VideoError(f"{path}: no usable frame timestamps and no frame rate")
        starts = np.round(np.arange(n) / fps, 6)
        end = float(n / fps)
    if end <= starts[-1]:
        end = float(starts[-1] + (1.0 / fps if fps > 0 else 0.04))
    return starts, end


def _is_vfr(starts: np.ndarray) -> bool:
    """Frame durations that differ by more than half the typical one (ms-rounded container times don't count)."""
    if len(starts) < 3:
        return False
    deltas = np.diff(starts)
    return bool(deltas.max() - deltas.min() > 0.5 * float(np.median(deltas)))


# Qwen2-VL's image processor refuses frames more elongated than this (smart_resize); such a video could pass scene
# detection and then stop training, selection and evaluation, so it is refused where it is first read.
MAX_ASPECT_RATIO = 200


def _make_info(path: Path, vr: Any, starts: np.ndarray, end_s: float, box: _Container, width: int, height: int) -> VideoInfo:
    n = len(vr)
    _check_complete(path, n, box.declared_frames)
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise VideoError(
            f"{path}: {width}x{height} frames: an aspect ratio beyond {MAX_ASPECT_RATIO}:1, which the selector's "
            "image processor cannot take"
        )
    duration = max(end_s, 1e-6)
    fps = float(vr.get_avg_fps() or 0.0) or n / duration
    return VideoInfo(
        video_id=path.stem,
        path=str(path),
        fps=fps,
        num_frames=n,
        duration_s=duration,
        width=width,
        height=height,
        rotation=box.rotation,
        vfr=_is_vfr(starts),
    )


def read_video_info(path: str | os.PathLike[str]) -> VideoInfo:
    """Metadata of a video: frame count and times from the stream's index, size from the container (no decoding)."""
    p = Path(path)
    vr = _open_decord(p)
    box = _container_probe(p)
    starts, end = _frame_times(vr, p)
    width, height = (box.width, box.height) if box.width and box.height else _display_size(vr)[::-1]
    return _make_info(p, vr, starts, end, box, width, height)


def _display_size(vr: Any) -> tuple[int, int]:
    """(height, width) of frames as decord hands them out (after rotation, after any decoder resize).

    decord exposes the output size only through a decoded frame, so the first frame is decoded once
    (negligible next to anything that then reads the video for real).
    """
    shape = vr[0].shape
    vr.seek(0)
    return int(shape[0]), int(shape[1])


def target_size(width: int, height: int, *, max_pixels: int | None = None, out_width: int | None = None) -> tuple[int, int]:
    """Output (width, height) keeping the aspect ratio: `out_width` if given, then capped at `max_pixels`; never upscaled."""
    w, h = float(width), float(height)
    if out_width is not None and out_width < w:
        h, w = h * out_width / w, float(out_width)
    if max_pixels is not None and w * h > max_pixels:
        s = math.sqrt(max_pixels / (w * h))
        w, h = w * s, h * s
    return max(2, int(round(w / 2)) * 2), max(2, int(round(h / 2)) * 2)


class _NoKeyframeDecoding(Exception):
    """The PyAV decoder cannot serve this file exactly as decord indexes it (the reader falls back to decord)."""


class KeyframeDecoder:
    """Exact frames of one video, decoded with PyAV in keyframe-group order: the floor for random access.

    Frame i is the i-th frame in presentation order, as in decord's index (the packets' presentation timestamps,
    sorted; `VideoReader` checks that both count the same frames). A request's frames are decoded in ascending
    order: for each needed keyframe group the decoder seeks to its keyframe once and decodes up to the last frame
    wanted from it, converting (and resizing) only the wanted frames. When the next wanted frame lies in the group
    being decoded, or in the one right after it, decoding simply continues, across calls too, so a caller walking
    forward through a video (captions scene by scene, a long read in batches) never seeks back.

    The packet index is read on first use (a demux pass, no decoding). Raises `_NoKeyframeDecoding` when the file
    is not one it can serve exactly (then nothing has been returned from it).
    """

    def __init__(self, path: Path, num_frames: int, size: tuple[int, int], *, num_threads: int = 1) -> None:
        self.path = path
        self.num_frames = num_frames
        self.size = size  # (width, height) handed out, displayed orientation
        self.num_threads = num_threads
        self._container: Any = None
        self._stream: Any = None
        self._frames: Iterator[Any] | None = None  # the decode iterator, positioned after frame `_last`
        self._last = -1
        self._pts: np.ndarray | None = None
        self._index: dict[int, int] = {}  # presentation timestamp -> frame index
        self._groups: list[int] = []  # first frame index of every keyframe group, ascending
        self.seeks = 0
        self.decoded = 0

    def _open(self) -> None:
        import av

        try:
            with av.open(str(self.path)) as probe:
                stream = probe.streams.video[0]
                pts: list[int] = []
                keys: list[int] = []
                for packet in probe.demux(stream):
                    if packet.size == 0:  # the demuxer's final flush packet
                        continue
                    if packet.pts is None:
                        raise _NoKeyframeDecoding("packets without presentation timestamps")
                    pts.append(packet.pts)
                    if packet.is_keyframe:
                        keys.append(packet.pts)
            container = av.open(str(self.path))
        except (av.error.FFmpegError, IndexError, OSError) as exc:
            raise _NoKeyframeDecoding(str(exc)) from None
        order = np.sort(np.asarray(pts, dtype=np.int64))
        if len(order) != self.num_frames or (len(order) > 1 and np.any(np.diff(order) == 0)):
            container.close()
            raise _NoKeyframeDecoding(f"{len(order)} packets with distinct times, index has {self.num_frames} frames")
        groups = sorted({int(i) for i in np.searchsorted(order, np.asarray(keys, dtype=np.int64))} | {0})
        stream = container.streams.video[0]
        if self.num_threads != 1:
            stream.thread_type = "AUTO"
        stream.codec_context.thread_count = self.num_threads
        self._container, self._stream, self._pts, self._groups = container, stream, order, groups
        self._index = {int(t): i for i, t in enumerate(order.tolist())}

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container = self._stream = self._frames = None
        self._last = -1

    def _group_of(self, i: int) -> int:
        return self._groups[bisect.bisect_right(self._groups, i) - 1]

    def _seek(self, group: int) -> None:
        assert self._pts is not None
        self._container.seek(int(self._pts[group]), stream=self._stream, backward=True, any_frame=False)
        self._frames = self._container.decode(self._stream)
        self._last = -1
        self.seeks += 1

    def _convert(self, frame: Any) -> np.ndarray:
        w, h = self.size
        turns = (int(getattr(frame, "rotation", 0) or 0) // 90) % 4  # display matrix, counter-clockwise
        if turns % 2:
            w, h = h, w  # resize in the stored orientation, then turn
        if (frame.width, frame.height) == (w, h):
            arr = frame.to_ndarray(format="rgb24")
        else:
            arr = frame.to_ndarray(width=w, height=h, format="rgb24", interpolation="BILINEAR")
        return np.ascontiguousarray(np.rot90(arr, turns)) if turns else arr

    def decode(self, indices: Sequence[int]) -> np.ndarray:
        """uint8 RGB frames `[N, H, W, 3]` for sorted, unique, in-range `indices`."""
        import av

        if self._container is None:
            self._open()
        assert self._pts is not None
        w, h = self.size
        out = np.empty((len(indices), h, w, 3), dtype=np.uint8)
        try:
            for j, i in enumerate(indices):
                group = self._group_of(i)
                if self._frames is None or not (group - 1 <= self._last < i):
                    self._seek(group)
                while True:
                    frame = next(self._frames, None) if self._frames is not None else None
                    if frame is None:
                        raise _NoKeyframeDecoding(f"the stream ended before frame {i}")
                    k = self._index.get(frame.pts, -1)
                    if k < 0:  # a frame the index does not list (no timestamp): not one anybody asked for
                        continue
                    self.decoded += 1
                    self._last = k
                    if k == i:
                        out[j] = self._convert(frame)
                        break
                    if k > i:
                        raise _NoKeyframeDecoding(f"frame {i} was not produced by the decoder")
        except av.error.FFmpegError as exc:
            self.close()
            raise _NoKeyframeDecoding(str(exc)) from None
        except _NoKeyframeDecoding:
            self.close()
            raise
        return out


class VideoReader:
    """Frames of one video at given indices, decoded in keyframe-group order and optionally resized.

    Use as a context manager. Memory is bounded by what one call asks for (`get_frames`) or by one batch
    (`iter_batches`); the decoder itself holds only its codec state, and does nothing between calls.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_pixels: int | None = None,
        width: int | None = None,
        num_threads: int = 1,
    ) -> None:
        if max_pixels is not None and max_pixels <= 0:
            raise VideoError(f"{path}: max_pixels must be positive, got {max_pixels}")
        if width is not None and width <= 0:
            raise VideoError(f"{path}: width must be positive, got {width}")
        self.path = Path(path)
        self.num_threads = num_threads
        box = _container_probe(self.path)
        vr = _open_decord(self.path)  # the frame index (presentation times); nothing is decoded
        full_w, full_h = box.width, box.height
        if not (full_w and full_h):
            full_h, full_w = _display_size(vr)
        resize = max_pixels is not None or width is not None
        out_w, out_h = target_size(full_w, full_h, max_pixels=max_pixels, out_width=width) if resize else (full_w, full_h)
        starts, end = _frame_times(vr, self.path)
        self.info: VideoInfo = _make_info(self.path, vr, starts, end, box, full_w, full_h)
        self.timestamps_s: np.ndarray = starts
        self.frame_size: tuple[int, int] = (out_w, out_h)  # (width, height) of the frames handed out
        self._scaled = (out_w, out_h) != (full_w, full_h)
        self._decoder: KeyframeDecoder | None = KeyframeDecoder(
            self.path, self.info.num_frames, self.frame_size, num_threads=num_threads
        )
        self._decord: Any = None  # opened only if PyAV cannot serve the file
        self._closed = False

    # -- context manager -------------------------------------------------------------------------------
    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._decoder is not None:
            self._decoder.close()
        self._decord = None
        self._closed = True

    def __len__(self) -> int:
        return self.info.num_frames

    # -- frames ----------------------------------------------------------------------------------------
    def _check_indices(self, indices: Sequence[int]) -> list[int]:
        n = self.info.num_frames
        out = []
        for i in indices:
            j = int(i)
            if j != i:
                raise VideoError(f"{self.path}: frame index {i!r} is not an integer")
            if j < 0 or j >= n:
                raise VideoError(f"{self.path}: frame index {j} is past the end (video has {n} frames, 0..{n - 1})")
            out.append(j)
        return out

    def _decode_decord(self, uniq: list[int]) -> np.ndarray:
        """The fallback decoder, stopped after every call (`seek(0)`): left alone, decord's reader keeps decoding
        ahead on its own thread, a core busy and memory growing by gigabytes on a long video."""
        if self._decord is None:
            w, h = self.frame_size
            self._decord = _open_decord(self.path, width=w if self._scaled else -1, height=h if self._scaled else -1,
                                        num_threads=self.num_threads)
        try:
            return self._decord.get_batch(uniq).asnumpy()
        except Exception as exc:  # decord raises RuntimeError/DECORDError on corrupt or truncated streams
            raise VideoError(
                f"{self.path}: decoding frames {uniq[0]}..{uniq[-1]} failed (truncated or corrupt video?): "
                f"{_decoder_message(exc)}"
            ) from None
        finally:
            try:
                self._decord.seek(0)
            except Exception:  # a reader that failed above may refuse to seek: it is dropped
                self._decord = None

    def _decode(self, uniq: list[int]) -> np.ndarray:
        if self._decoder is not None:
            try:
                return self._decoder.decode(uniq)
            except _NoKeyframeDecoding as exc:
                log.debug("%s: keyframe-group decoding unavailable (%s); decoding with decord", self.path, exc)
                self._decoder = None
        return self._decode_decord(uniq)

    def get_frames(self, indices: Sequence[int]) -> np.ndarray:
        """uint8 RGB frames `[N, H, W, 3]` in the order asked (duplicates allowed; decoded once each)."""
        if self._closed:
            raise VideoError(f"{self.path}: reader is closed")
        idx = self._check_indices(indices)
        w, h = self.frame_size
        if not idx:
            return np.zeros((0, h, w, 3), dtype=np.uint8)
        uniq = sorted(set(idx))  # decoded forward, keyframe group by keyframe group; reordered afterwards
        batch = self._decode(uniq)
        if batch.shape[0] != len(uniq):
            raise VideoError(f"{self.path}: decoder returned {batch.shape[0]} frames for {len(uniq)} indices (truncated video?)")
        if uniq == idx:
            return batch
        pos = {j: k for k, j in enumerate(uniq)}
        return batch[[pos[j] for j in idx]]

    def iter_batches(self, indices: Sequence[int], batch_size: int) -> Iterator[tuple[list[int], np.ndarray]]:
        """(indices, frames) for consecutive chunks of `indices`, at most `batch_size` frames in memory at once."""
        if batch_size <= 0:
            raise VideoError(f"{self.path}: batch_size must be positive, got {batch_size}")
        idx = self._check_indices(indices)  # fail before decoding anything
        for s in range(0, len(idx), batch_size):
            chunk = idx[s : s + batch_size]
            yield chunk, self.get_frames(chunk)

    def times(self, indices: Sequence[int]) -> list[float]:
        """Presentation times (s) of the given frames."""
        return [float(self.timestamps_s[i]) for i in self._check_indices(indices)]


@dataclass(frozen=True)
class VideoTimeline:
    """A video's frame count, rate, duration and the presentation time of every frame.

    What the sampler, the selector's prompt, the reward and the baselines need to turn clips (seconds) into frame
    indices and back. One object for all of them, read from the stream's index (no decoding).
    """

    path: str
    num_frames: int
    fps: float
    duration_s: float
    timestamps_s: tuple[float, ...]

    @classmethod
    def of(cls, reader: VideoReader) -> VideoTimeline:
        info = reader.info
        return cls(str(reader.path), int(info.num_frames), float(info.fps), float(info.duration_s),
                   tuple(np.asarray(reader.timestamps_s, dtype=np.float64).tolist()))

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> VideoTimeline:
        with VideoReader(path) as reader:
            return cls.of(reader)

    def times(self, indices: Sequence[int]) -> list[float]:
        return [self.timestamps_s[i] for i in indices]


def uniform_indices(num_frames: int, count: int) -> list[int]:
    """Midpoints of `count` equal segments of `[0, num_frames)`: sorted, unique, `min(count, num_frames)` of them."""
    if num_frames <= 0 or count <= 0:
        return []
    if count >= num_frames:
        return list(range(num_frames))
    return [(2 * i + 1) * num_frames // (2 * count) for i in range(count)]  # exact integer midpoints


def candidate_frames(timeline: VideoTimeline, num_candidates: int) -> tuple[list[int], list[float]]:
    """The selector's T candidate frames of a video: the midpoints of T equal segments of its frames, with their
    presentation times. The one rule: data building, training, selection and evaluation all call it, so the frames
    a model was trained on for a video and T are the ones it sees at inference."""
    idx = uniform_indices(timeline.num_frames, num_candidates)
    return idx, timeline.times(idx)


def sample_candidates(path: str | os.PathLike[str], num_candidates: int) -> tuple[list[int], list[float]]:
    """`candidate_frames` of the video at `path` (its index only; nothing is decoded)."""
    p = Path(path)
    vr = _open_decord(p)
    _check_complete(p, len(vr), _container_probe(p).declared_frames)
    starts, end = _frame_times(vr, p)
    timeline = VideoTimeline(str(p), len(vr), float(vr.get_avg_fps() or 0.0), end, tuple(starts.tolist()))
    return candidate_frames(timeline, num_candidates)


# -- sequential analysis decoding (scene detection) ---------------------------------------------------------------

# 8-bit pixel formats whose first plane is the luma (Y) plane, as the decoder wrote it.
_LUMA_PLANE_FORMATS = frozenset(
    {"yuv420p", "yuv422p", "yuv444p", "yuv440p", "yuv411p", "yuv410p", "nv12", "nv21", "nv16", "nv24",
     "yuvj420p", "yuvj422p", "yuvj444p", "yuvj440p", "yuvj411p", "gray"}
)
# Limited-range luma (16-235) to full range (0-255): what the Y of `cv2.COLOR_BGR2YUV` recovers from the decoder's
# RGB output (the chroma terms of the BT.601 matrix cancel in 0.299 R + 0.587 G + 0.114 B, leaving 255/219 (Y - 16)).
_LIMITED_TO_FULL = np.clip(np.round((np.arange(256) - 16) * 255.0 / 219.0), 0, 255).astype(np.uint8)


class AnalysisDecodeError(Exception):
    """The fast analysis decoder could not read a file that the decord reader may still read (callers fall back)."""


def _luma_plane(frame: Any, reformatter: Any) -> tuple[np.ndarray, bool]:
    """(luma image at full size, whether it is limited range) of a PyAV frame, without any colour conversion."""
    name = frame.format.name
    if name in _LUMA_PLANE_FORMATS:
        plane = frame.planes[0]
        y = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[: frame.height, : frame.width]
        full = name.startswith("yuvj") or name == "gray" or int(frame.color_range or 0) == 2  # AVCOL_RANGE_JPEG
        return y, not full
    # Anything else (RGB, 10-bit, paletted): swscale's gray output is full-range luma.
    gray = reformatter.reformat(frame, format="gray").to_ndarray()
    return gray, False


def _shrink(y: np.ndarray, out_w: int, out_h: int, *, smooth: bool = False) -> np.ndarray:
    """`y` at (out_w, out_h), sampled on a regular grid that keeps one source pixel in every `f` x `f` cell, copied
    from a strided view so that only the sampled pixels are ever read.

    Plain (`smooth=False`): one sample per output pixel, `f` the largest whole step that still covers the output. A
    luma histogram of hard cuts and fades needs no more: on the shared test videos the scenes are those of an area
    mean of the whole frame (tests/test_scenes.py), and the per-frame cost is a copy of `out_w * out_h` bytes (6 us at
    160x107, against 30-80 us for OpenCV's bilinear or area resizes), which keeps the pass at the decoder's speed.
    `smooth=True`: each output pixel the mean of a 2x2 block of samples (a grid at twice the output size, then an exact
    INTER_AREA halving). The averaging halves the sensor and compression noise that the twin-comparison dissolve
    tracker would otherwise accumulate over a run of frames (camera pans then cross its low threshold more often).
    Frames less than twice (smooth: four times) the output size: nearest-neighbour (smooth: bilinear) sampling.
    """
    import cv2

    h, w = y.shape
    if (w, h) == (out_w, out_h):
        return y
    if not smooth:
        f = min(w // out_w, h // out_h)
        if f >= 2:
            return np.ascontiguousarray(y[f // 2 :: f, f // 2 :: f][:out_h, :out_w])
        return cv2.resize(y, (out_w, out_h), interpolation=cv2.INTER_NEAREST)
    fx, fy = w // (2 * out_w), h // (2 * out_h)
    if fx < 2 and fy < 2:
        whole = w % out_w == 0 and h % out_h == 0
        return cv2.resize(y, (out_w, out_h), interpolation=cv2.INTER_AREA if whole else cv2.INTER_LINEAR)
    fx, fy = max(fx, 1), max(fy, 1)
    grid = y[fy // 2 :: fy, fx // 2 :: fx][: 2 * out_h, : 2 * out_w]
    return cv2.resize(grid, (out_w, out_h), interpolation=cv2.INTER_AREA)


def _to_full_range(batch: np.ndarray, limited: list[bool]) -> np.ndarray:
    """Limited-range frames of a luma batch stretched to full range: one table lookup for the whole batch."""
    import cv2

    if not any(limited):
        return batch
    if all(limited):
        return cv2.LUT(batch.reshape(-1, batch.shape[-1]), _LIMITED_TO_FULL).reshape(batch.shape)
    return np.stack([cv2.LUT(f, _LIMITED_TO_FULL) if lim else f for f, lim in zip(batch, limited)])


def iter_luma_batches(
    path: str | os.PathLike[str],
    width: int,
    batch_size: int,
    *,
    num_threads: int = 0,
    skip_loop_filter: bool = True,
    smooth: bool = False,
) -> Iterator[np.ndarray]:
    """Every frame's luma (uint8 `[B, H, W]`, full range 0-255, `width` wide), in presentation order, in batches.

    The scene segmenter's decoder: one sequential pass with PyAV (FFmpeg), about 1.5x the throughput of decord's RGB
    frames at the same width on the test videos, and as fast as decoding alone (README "## Scenes"), because it
    - reads the decoder's own Y plane: no YUV -> RGB conversion, and the chroma planes are never touched;
    - samples that plane on a regular grid at `width` (`_shrink`, averaged with `smooth`; a histogram needs no more);
    - lets FFmpeg decode with frame/slice threads (`num_threads`, 0: as many as CPUs);
    - with `skip_loop_filter`, skips H.264/HEVC's in-loop deblocking filter, the costliest optional stage. The filter
      smooths block edges by a few levels; it moves pixels between neighbouring histogram bins but not the histogram's
      shape, and every frame is still decoded, so cuts are found on the exact frame (the tests check both).
    Rotation metadata is ignored: a histogram does not depend on orientation. Frames are not seekable here; for
    random access use `VideoReader` (decord). Raises `AnalysisDecodeError` if FFmpeg cannot read the file.
    """
    try:
        import av
        from av.video.reformatter import VideoReformatter
    except ImportError as exc:  # pragma: no cover - av is a dependency; keep a clear message if it is missing
        raise AnalysisDecodeError(f"{path}: PyAV is not installed ({exc})") from None

    batch: list[np.ndarray] = []
    limited: list[bool] = []
    size: tuple[int, int] | None = None
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise AnalysisDecodeError(f"{path}: no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            stream.codec_context.thread_count = num_threads
            if skip_loop_filter:
                stream.codec_context.options = {"skip_loop_filter": "all"}
            reformatter = VideoReformatter()
            for frame in container.decode(stream):
                y, lim = _luma_plane(frame, reformatter)
                if size is None:
                    size = target_size(y.shape[1], y.shape[0], out_width=width)
                batch.append(_shrink(y, *size, smooth=smooth))
                limited.append(lim)
                if len(batch) == batch_size:
                    yield _to_full_range(np.stack(batch), limited)
                    batch, limited = [], []
    except av.error.FFmpegError as exc:
        raise AnalysisDecodeError(f"{path}: {exc}") from None
    if batch:
        yield _to_full_range(np.stack(batch), limited)


class FrameCache:
    """Decoded frames as PIL images, shared by everything that asks for the same video more than once.

    The GRPO reward decodes the frames of all completions of a group from one video; SFT1 has several tasks per
    video; evaluation asks for several k of the same question. Open readers are kept for the `max_videos` most
    recently used videos (LRU), and decoded frames are kept up to `max_bytes` in total (LRU), so memory stays
    bounded however many videos pass through: at most `max_bytes` of frames plus one decoder state per open reader
    (a few frames at the video's size), and no reader decodes anything between calls (tests/test_video.py measures
    CPU and memory after a request). Thread-safe (one lock; readers are not).
    """

    def __init__(self, max_videos: int = 8, *, max_bytes: int = 1 << 30, num_threads: int = 1) -> None:
        if max_videos <= 0:
            raise ValueError(f"max_videos must be positive, got {max_videos}")
        self.max_videos = max_videos
        self.max_bytes = max_bytes
        self.num_threads = num_threads
        self._readers: OrderedDict[tuple[str, int | None], VideoReader] = OrderedDict()
        self._frames: OrderedDict[tuple[str, int | None, int], Image.Image] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def _reader(self, key: tuple[str, int | None]) -> VideoReader:
        reader = self._readers.get(key)
        if reader is not None:
            self._readers.move_to_end(key)
            return reader
        reader = VideoReader(key[0], max_pixels=key[1], num_threads=self.num_threads)
        self._readers[key] = reader
        while len(self._readers) > self.max_videos:
            _, old = self._readers.popitem(last=False)
            old.close()
        return reader

    def info(self, path: str | os.PathLike[str], *, max_pixels: int | None = None) -> VideoInfo:
        with self._lock:
            return self._reader((str(Path(path).resolve()), max_pixels)).info

    def timestamps(self, path: str | os.PathLike[str], indices: Sequence[int], *, max_pixels: int | None = None) -> list[float]:
        with self._lock:
            return self._reader((str(Path(path).resolve()), max_pixels)).times(indices)

    def timeline(self, path: str | os.PathLike[str], *, max_pixels: int | None = None) -> VideoTimeline:
        """The video's `VideoTimeline`, from the same reader its frames come from."""
        with self._lock:
            return VideoTimeline.of(self._reader((str(Path(path).resolve()), max_pixels)))

    def images(
        self, path: str | os.PathLike[str], indices: Sequence[int], *, max_pixels: int | None = None
    ) -> list[Image.Image]:
        """PIL RGB images of `indices` (in that order), decoded at most `max_pixels` pixels each."""
        from PIL import Image

        key = (str(Path(path).resolve()), max_pixels)
        with self._lock:
            reader = self._reader(key)
            wanted = reader._check_indices(indices)
            missing = sorted({i for i in wanted if (key[0], key[1], i) not in self._frames})
            self.hits += len(wanted) - len(missing)
            self.misses += len(missing)
            if missing:
                for i, frame in zip(missing, reader.get_frames(missing), strict=True):
                    self._frames[(key[0], key[1], i)] = Image.fromarray(frame)
                    self._bytes += frame.nbytes
            out = []
            for i in wanted:
                fkey = (key[0], key[1], i)
                self._frames.move_to_end(fkey)
                out.append(self._frames[fkey])
            # Evict least recently used frames beyond the byte budget (never the ones just returned).
            protected = len(set(wanted))
            while self._bytes > self.max_bytes and len(self._frames) > protected:
                _, img = self._frames.popitem(last=False)
                self._bytes -= img.width * img.height * 3
            return out

    def clear(self) -> None:
        with self._lock:
            for reader in self._readers.values():
                reader.close()
            self._readers.clear()
            self._frames.clear()
            self._bytes = 0
