"""The frame store: each video's T candidate frames, decoded once by the data stage, read by training without decoding.

Every training example of a video shows the same T candidate frames (`candidate_frames`: the one rule shared with
inference), and one video has many examples (SFT1's tasks, one SFT2/GRPO example per query). Decoding them at batch
time costs about 4-8 CPU-seconds per example at T=256 even at the floor (README "## Video I/O"), so four data loader
workers could not feed a 1 s step. The data stage therefore decodes each video's candidates once, in keyframe-group
order, at the recipe's pixel budget (`frames.num_candidates`, `frames.max_pixels`), and writes them as one raw
uint8 array per video; the data loader maps it (`numpy.load(mmap_mode="r")`) and copies out the rows it needs.

Layout, beside the task files of a data build (`<out>/tasks/` -> `<out>/frames/`):

    <out>/frames/<stem>-<sha1 of the path>.t<T>.px<max_pixels>.npy    [T, H, W, 3] uint8, RGB
    <out>/frames/<stem>-<sha1 of the path>.t<T>.px<max_pixels>.json   what it holds and what it was made from

An entry is keyed by everything that determines it (the video's path, size and modification time, T, max_pixels
and the store's format version) and is trusted only when its JSON says so and the array has the recorded shape;
anything else is rewritten. Both files are written atomically, the array first: the JSON is the completion marker.
Size: T x H x W x 3 bytes per video (77 MB at T=256 and 100,352 pixels; 50 KB for the tiny recipe), recorded as
`bytes` in the JSON and summed in the build's summary.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.io import atomic_open, atomic_write_json

STORE_VERSION = 1
STORE_DIRNAME = "frames"


def store_beside(task_file: str | os.PathLike[str]) -> Path:
    """The frame store of the data build that wrote `task_file` (`<out>/tasks/x.jsonl` -> `<out>/frames`)."""
    return Path(task_file).resolve().parent.parent / STORE_DIRNAME


def _source_stamp(video: Path) -> dict[str, int]:
    st = video.stat()
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


@dataclass(frozen=True)
class StoredFrames:
    """One video's candidate frames as stored: `frames[k]` is frame `indices[k]` (shown at `timestamps_s[k]`)."""

    video: str
    indices: list[int]
    timestamps_s: list[float]
    frames: np.ndarray  # [T, H, W, 3] uint8, memory-mapped
    nbytes: int

    def rows(self, indices: list[int]) -> list[int] | None:
        """Rows of `indices` in the store, or None when one of them is not stored."""
        pos = {i: k for k, i in enumerate(self.indices)}
        try:
            return [pos[i] for i in indices]
        except KeyError:
            return None


class FrameStore:
    """Read and write the entries of one store folder. Reads keep the last `max_open` entries mapped."""

    def __init__(self, root: str | os.PathLike[str], *, max_open: int = 16) -> None:
        self.root = Path(root)
        self.max_open = max_open
        self._open: OrderedDict[tuple[str, int, int], StoredFrames | None] = OrderedDict()

    def name(self, video: str | os.PathLike[str], num_candidates: int, max_pixels: int) -> str:
        p = Path(video).resolve()
        digest = hashlib.sha1(str(p).encode()).hexdigest()[:12]
        return f"{p.stem[:60]}-{digest}.t{num_candidates}.px{max_pixels}"

    def paths(self, video: str | os.PathLike[str], num_candidates: int, max_pixels: int) -> tuple[Path, Path]:
        base = self.root / self.name(video, num_candidates, max_pixels)
        return base.with_name(base.name + ".npy"), base.with_name(base.name + ".json")

    def _meta(self, video: Path, num_candidates: int, max_pixels: int) -> dict[str, Any] | None:
        """The entry's JSON if it is complete and made from this very file with these settings, else None."""
        array, meta_path = self.paths(video, num_candidates, max_pixels)
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            stamp = _source_stamp(video)
        except (OSError, ValueError):
            return None
        expected = {"version": STORE_VERSION, "video": str(video), "source": stamp,
                    "num_candidates": num_candidates, "max_pixels": max_pixels}
        if not isinstance(meta, dict) or any(meta.get(k) != v for k, v in expected.items()):
            return None
        if not array.is_file() or array.stat().st_size < int(meta.get("bytes", 0)):
            return None
        return meta

    def get(self, video: str | os.PathLike[str], num_candidates: int, max_pixels: int) -> StoredFrames | None:
        """The video's stored candidates at (T, max_pixels), or None when the store has no valid entry for them."""
        p = Path(video).resolve()
        key = (str(p), num_candidates, max_pixels)
        if key in self._open:
            self._open.move_to_end(key)
            return self._open[key]
        found = None
        meta = self._meta(p, num_candidates, max_pixels)
        if meta is not None:
            try:
                frames = np.load(self.paths(p, num_candidates, max_pixels)[0], mmap_mode="r")
            except (OSError, ValueError):
                frames = None
            if frames is not None and frames.dtype == np.uint8 and list(frames.shape) == meta["shape"]:
                found = StoredFrames(str(p), list(meta["indices"]), list(meta["timestamps_s"]), frames,
                                     int(meta["bytes"]))
        self._open[key] = found
        while len(self._open) > self.max_open:
            self._open.popitem(last=False)
        return found

    def write(
        self, video: str | os.PathLike[str], num_candidates: int, max_pixels: int, *, batch_size: int = 32
    ) -> dict[str, Any]:
        """Decode and store the video's candidates (unless a valid entry exists); returns the entry's JSON.

        Frames are decoded in keyframe-group order, `batch_size` at a time, and appended to the array file, so
        memory holds one batch whatever T is.
        """
        from data_builder.video import VideoReader, VideoTimeline, candidate_frames

        p = Path(video).resolve()
        meta = self._meta(p, num_candidates, max_pixels)
        if meta is not None:
            return meta
        array, meta_path = self.paths(p, num_candidates, max_pixels)
        stamp = _source_stamp(p)
        t0 = time.process_time()
        with VideoReader(p, max_pixels=max_pixels) as reader:
            indices, times = candidate_frames(VideoTimeline.of(reader), num_candidates)
            w, h = reader.frame_size
            shape = (len(indices), h, w, 3)
            with atomic_open(array, "wb") as fh:
                np.lib.format.write_array_header_1_0(fh, {"descr": "|u1", "fortran_order": False, "shape": shape})
                for _, frames in reader.iter_batches(indices, batch_size):
                    fh.write(np.ascontiguousarray(frames, dtype=np.uint8).tobytes())
        meta = {
            "version": STORE_VERSION,
            "video": str(p),
            "source": stamp,
            "num_candidates": num_candidates,
            "max_pixels": max_pixels,
            "shape": list(shape),
            "bytes": int(np.prod(shape)),
            "indices": [int(i) for i in indices],
            "timestamps_s": [float(t) for t in times],
            "decode_cpu_s": round(time.process_time() - t0, 3),
        }
        atomic_write_json(meta_path, meta, indent=None)
        self._open.pop((str(p), num_candidates, max_pixels), None)
        return meta
