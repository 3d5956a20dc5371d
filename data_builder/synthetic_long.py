"""A long H.264 video with a known structure: for the I/O benchmarks and the keyframe-group decoding tests.

`data_builder.synthetic` writes short mp4v/MJPG clips whose every frame is cheap to decode. Decoding cost at batch
time depends on what real sources have: H.264 with B-frames and a keyframe only every few seconds, so that reaching
one frame means decoding the frames before it back to its keyframe. This writer produces exactly that with PyAV's
libx264 (`gop` frames per keyframe group, no scene-cut keyframes, B-frames on), at any size and length.

The picture: each scene (a hard cut every `scene_s` seconds) is a colour gradient with textured noise and two shapes
moving across it, so motion prediction has work to do and the bitrate is that of ordinary footage (about 1-2 Mbit/s
at 640x360). A barcode along the top edge encodes the frame number (`BARCODE_BITS` bits, so a 10-hour video at
30 fps still fits), so a test can check that decoding frame N really returns the frame written as N.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

BARCODE_BITS = 20
BARCODE_ROWS = 8


def _barcode_cell(width: int) -> int:
    return max(4, width // (2 * BARCODE_BITS))


def read_frame_number(frame_rgb: np.ndarray, source_width: int) -> int:
    """The frame number in a frame's barcode; `source_width` is the width the video was written at (frames may
    come back resized)."""
    h, w = frame_rgb.shape[:2]
    cell = _barcode_cell(source_width) * w / source_width
    rows = max(1, int(BARCODE_ROWS * w / source_width) - 1)
    value = 0
    for b in range(BARCODE_BITS):
        x0 = int(b * cell + cell * 0.3)
        x1 = max(int(b * cell + cell * 0.7), x0 + 1)
        if frame_rgb[:rows, x0:x1].mean() > 127:
            value |= 1 << b
    return value


def _scene_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    c0, c1 = rng.integers(20, 236, size=3), rng.integers(20, 236, size=3)
    t = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None]
    grad = (1 - t) * c0[None, None, :] + t * c1[None, None, :]
    texture = rng.normal(0, 10, size=(height // 8 + 1, width // 8 + 1, 1)).astype(np.float32)
    texture = np.kron(texture, np.ones((8, 8, 1), dtype=np.float32))[:height, :width]
    return np.clip(grad + texture, 0, 255).astype(np.int16)


def write_long_video(
    path: str | os.PathLike[str],
    *,
    duration_s: float,
    fps: int = 30,
    size: tuple[int, int] = (640, 360),
    gop: int = 250,
    scene_s: float = 20.0,
    crf: int = 23,
    preset: str = "veryfast",
    seed: int = 0,
) -> Path:
    """Write an H.264 mp4 (yuv420p, keyframe every `gop` frames, B-frames) of `duration_s` seconds; returns the path.

    Written to a temporary name and renamed, so a half-written file never looks finished.
    """
    import av
    import cv2

    width, height = size
    if width < BARCODE_BITS * _barcode_cell(width) or height < 4 * BARCODE_ROWS:
        raise ValueError(f"size {size} too small for the frame-number barcode")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.stem}.tmp{p.suffix}")
    rng = np.random.default_rng(seed)
    total = int(round(duration_s * fps))
    scene_frames = max(1, int(round(scene_s * fps)))
    noise = [rng.integers(-5, 6, size=(height, width, 3), dtype=np.int16) for _ in range(7)]
    cell = _barcode_cell(width)
    with av.open(str(tmp), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.options = {"crf": str(crf), "preset": preset, "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"}
        bg = None
        shapes: list[tuple[float, float, float, float, int, tuple[int, int, int]]] = []
        for i in range(total):
            if i % scene_frames == 0:
                bg = _scene_background(rng, width, height)
                shapes = [
                    (rng.uniform(0.2, 0.8) * width, rng.uniform(0.3, 0.8) * height, rng.uniform(-2, 2), rng.uniform(-1, 1),
                     int(rng.integers(height // 12, height // 5)), tuple(int(c) for c in rng.integers(0, 256, size=3)))
                    for _ in range(2)
                ]
            assert bg is not None
            k = i % scene_frames
            shift = (2 * k) % width  # the camera pans: every pixel moves, as in ordinary footage
            panned = np.concatenate([bg[:, shift:], bg[:, :shift]], axis=1) if shift else bg
            img = np.clip(panned + noise[int(rng.integers(len(noise)))], 0, 255).astype(np.uint8)
            for x0, y0, vx, vy, r, color in shapes:
                x = int(np.clip(x0 + vx * k, r, width - r))
                y = int(np.clip(y0 + vy * k, r + BARCODE_ROWS, height - r))
                cv2.circle(img, (x, y), r, color, -1, lineType=cv2.LINE_AA)
            for b in range(BARCODE_BITS):
                img[:BARCODE_ROWS, b * cell : (b + 1) * cell] = 255 if (i >> b) & 1 else 0
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, p)
    return p
