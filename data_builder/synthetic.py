"""Sample videos with known content: for tests, the GRPO learning check and `make demo`.

Each video is a sequence of scenes; a scene is a flat coloured background with one white or black shape
(circle, square, triangle, ...) drifting slowly across it, plus mild per-pixel noise so that no frame is an
exact copy of the previous one (a detector that only works on static pictures would pass a static test).
Scenes change by a hard cut, whose frame is returned, so scene segmentation can be checked exactly.

A thin barcode along the top edge encodes the frame number (12 bits, 8-pixel cells, black/white), so a test
can check that decoding frame N really returns the picture written as frame N (`read_frame_number`).

Within one video every colour and every shape is used at most once, so the generated multiple-choice queries
("What shape is shown on the red background?", "What is the background colour when the circle is shown?")
have their answer visible in exactly one scene; each query carries that scene's span.

Writing uses OpenCV: `.mp4` with the mp4v codec, `.avi` with MJPG. Everything is deterministic given the seed.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from pipeline.core.contracts import Query, Scene
from pipeline.core.errors import VideoError

# RGB, far apart in hue and in luma (BT.601: 45, 61, 81, 107, 128, 150, 173, 195), so that a cut between any two is
# clear to a detector that compares luma histograms only.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (200, 30, 30),
    "green": (30, 160, 40),
    "blue": (30, 50, 200),
    "yellow": (230, 210, 30),
    "purple": (90, 10, 110),
    "orange": (240, 130, 20),
    "cyan": (60, 220, 230),
    "gray": (128, 128, 128),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond")

BARCODE_BITS = 12
BARCODE_CELL = 8  # pixels per bit (width), rows 0..BARCODE_ROWS-1
BARCODE_ROWS = 6

_CODECS = {".mp4": "mp4v", ".avi": "MJPG"}


@dataclass
class SyntheticScene:
    """One scene: `shape` in white/black on a `color` background, lasting `duration_s` seconds."""

    label: str
    color: tuple[int, int, int]
    shape: str
    duration_s: float
    color_name: str = ""
    start_s: float = 0.0
    end_s: float = 0.0
    start_frame: int = 0
    end_frame: int = 0  # exclusive


@dataclass
class SampleQuery:
    """A multiple-choice query answerable from exactly one scene (`scene_index`, spanning start_s..end_s)."""

    query_id: str
    text: str
    options: list[str]
    answer: int
    scene_index: int
    start_s: float
    end_s: float

    def to_query(self, video_id: str | None = None) -> Query:
        return Query(query_id=self.query_id, text=self.text, options=list(self.options), answer=self.answer,
                     video_id=video_id, task_type="synthetic")


@dataclass
class SampleVideo:
    path: Path
    video_id: str
    fps: float
    num_frames: int
    scenes: list[SyntheticScene]
    captions: list[str]
    queries: list[SampleQuery] = field(default_factory=list)
    cut_frames: list[int] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps

    def true_scenes(self) -> list[Scene]:
        """The scenes as written, as `pipeline.core.contracts.Scene` records."""
        return [
            Scene(index=i, start_frame=s.start_frame, end_frame=s.end_frame, start_s=s.start_s, end_s=s.end_s)
            for i, s in enumerate(self.scenes)
        ]


def _contrast(color: tuple[int, int, int]) -> tuple[int, int, int]:
    luma = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    return (20, 20, 20) if luma > 140 else (245, 245, 245)


def _draw_shape(img: np.ndarray, shape: str, center: tuple[int, int], r: int, color: tuple[int, int, int]) -> None:
    import cv2

    x, y = center
    bgr = color[::-1]
    if shape == "circle":
        cv2.circle(img, (x, y), r, bgr, -1, lineType=cv2.LINE_AA)
        return
    if shape == "square":
        cv2.rectangle(img, (x - r, y - r), (x + r, y + r), bgr, -1)
        return
    if shape == "triangle":
        pts = [(x, y - r), (x - r, y + r), (x + r, y + r)]
    elif shape == "diamond":
        pts = [(x, y - r), (x + r, y), (x, y + r), (x - r, y)]
    elif shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            a = -np.pi / 2 + k * np.pi / 5
            pts.append((int(round(x + rad * np.cos(a))), int(round(y + rad * np.sin(a)))))
    elif shape == "cross":
        t = max(2, r // 3)
        cv2.rectangle(img, (x - r, y - t), (x + r, y + t), bgr, -1)
        cv2.rectangle(img, (x - t, y - r), (x + t, y + r), bgr, -1)
        return
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")
    cv2.fillPoly(img, [np.array(pts, dtype=np.int32)], bgr, lineType=cv2.LINE_AA)


def _draw_barcode(img: np.ndarray, frame_no: int) -> None:
    for b in range(BARCODE_BITS):
        on = (frame_no >> b) & 1
        img[:BARCODE_ROWS, b * BARCODE_CELL : (b + 1) * BARCODE_CELL] = 255 if on else 0


def read_frame_number(frame_rgb: np.ndarray) -> int:
    """The frame number written into a synthetic frame's barcode (inverse of what `write_scene_video` draws)."""
    h, w = frame_rgb.shape[:2]
    cell = w / 160 * BARCODE_CELL  # the barcode scales with the frame if it was decoded resized
    rows = max(1, int(BARCODE_ROWS * h / 120) - 1)
    value = 0
    for b in range(BARCODE_BITS):
        x0, x1 = int(b * cell + cell * 0.25), max(int(b * cell + cell * 0.75), int(b * cell + cell * 0.25) + 1)
        if frame_rgb[:rows, x0:x1].mean() > 127:
            value |= 1 << b
    return value


def write_scene_video(
    path: str | os.PathLike[str],
    scenes: list[SyntheticScene],
    *,
    fps: float = 10,
    size: tuple[int, int] = (160, 120),
    seed: int = 0,
    barcode: bool = True,
) -> list[int]:
    """Write `scenes` back to back to `path` (.mp4: mp4v, .avi: MJPG); return the cut frames (first frame of scenes 2..n).

    Fills in each scene's start/end frame and seconds. Frame counts are `round(duration_s * fps)` (at least 1).
    Shapes drift at the same speed in pixels per second whatever `fps`, scaled with the frame width (at 10 fps and
    160 pixels, up to 1.5 pixels per frame). `barcode=False` leaves the frame number out: small frames (the demo's
    64x64) have no room for it, and the picture is then only background and shape.
    """
    import cv2

    p = Path(path)
    codec = _CODECS.get(p.suffix.lower())
    if codec is None:
        raise VideoError(f"{p}: unsupported extension for a synthetic video; use one of {', '.join(_CODECS)}")
    if not scenes:
        raise ValueError("write_scene_video needs at least one scene")
    width, height = size
    if barcode and (width < BARCODE_BITS * BARCODE_CELL or height < 48):
        raise ValueError(f"size {size} too small for the barcode; need at least ({BARCODE_BITS * BARCODE_CELL}, 48)")
    if min(width, height) < 32:
        raise ValueError(f"size {size} too small; need at least 32 pixels each way")
    top = BARCODE_ROWS if barcode else 0
    speed = (10.0 / float(fps)) * (width / 160.0)  # the default motion is defined at 10 fps and 160 pixels wide
    rng = np.random.default_rng(seed)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.stem}.tmp{p.suffix}")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*codec), float(fps), (width, height))
    if not writer.isOpened():
        raise VideoError(f"{p}: OpenCV cannot write {codec} video here")
    if codec == "MJPG":
        writer.set(cv2.VIDEOWRITER_PROP_QUALITY, 95)
    cuts: list[int] = []
    frame_no = 0
    try:
        for si, scene in enumerate(scenes):
            n = max(1, int(round(scene.duration_s * fps)))
            scene.start_frame, scene.end_frame = frame_no, frame_no + n
            scene.start_s, scene.end_s = frame_no / fps, (frame_no + n) / fps
            if si > 0:
                cuts.append(frame_no)
            r = min(width, height) // 5
            x0, y0 = rng.uniform(r + 4, width - r - 4), rng.uniform(r + top + 4, height - r - 4)
            vx, vy = rng.uniform(-1.5, 1.5) * speed, rng.uniform(-1.0, 1.0) * speed  # pixels per frame
            fg = _contrast(scene.color)
            bg = np.empty((height, width, 3), dtype=np.int16)
            bg[:] = scene.color[::-1]
            for t in range(n):
                x = int(np.clip(x0 + vx * t, r + 2, width - r - 2))
                y = int(np.clip(y0 + vy * t, r + top + 2, height - r - 2))
                noisy = bg + rng.integers(-6, 7, size=bg.shape, dtype=np.int16)
                img = np.clip(noisy, 0, 255).astype(np.uint8)
                _draw_shape(img, scene.shape, (x, y), r, fg)
                if barcode:
                    _draw_barcode(img, frame_no)
                writer.write(img)
                frame_no += 1
    finally:
        writer.release()
    os.replace(tmp, p)
    return cuts


def _options(answer: str, pool: list[str], rng: random.Random, n: int) -> tuple[list[str], int]:
    distractors = rng.sample([x for x in pool if x != answer], n - 1)
    opts = [answer, *distractors]
    rng.shuffle(opts)
    return opts, opts.index(answer)


QueryStyle = Literal["pair", "per_scene", "landmark"]


def make_sample_videos(
    out_dir: str | os.PathLike[str],
    n: int,
    *,
    seed: int = 0,
    min_scenes: int = 3,
    max_scenes: int = 6,
    fps: float = 10,
    size: tuple[int, int] = (160, 120),
    min_scene_s: float = 2.0,
    max_scene_s: float = 5.0,
    ext: str = ".mp4",
    num_options: int = 4,
    whole_seconds: bool = False,
    queries: QueryStyle = "pair",
    barcode: bool = True,
    video_s: int | None = None,
    landmark_color: str = "red",
) -> list[SampleVideo]:
    """Write `n` videos `sample_000.mp4 ...` into `out_dir` with scenes, captions and multiple-choice queries.

    Scene durations are drawn in [min_scene_s, max_scene_s] to 0.1 s, or as whole seconds with `whole_seconds`
    (every scene then starts and ends on a whole second, and so do the key clips a selector must predict).
    With `video_s` (whole seconds only) every video lasts exactly that long: its scene durations are a random split
    of `video_s` into whole seconds within [min_scene_s, max_scene_s], so videos differ only in what is where.
    `queries="pair"`: each video gets one shape query and one colour query, about two different scenes when it has
    more than one. `queries="per_scene"`: one shape query per scene ("What shape is shown on the red
    background?"), so every scene is the answer to one question. `queries="landmark"`: every video has one scene on
    the `landmark_color` background, wherever the draw puts it, and one question about it ("What shape is shown on the
    red background?"): the question is always the same, the place and the answer are not.
    """
    if not 1 <= min_scenes <= max_scenes <= min(len(SHAPES), len(COLORS)):
        raise ValueError(f"need 1 <= min_scenes <= max_scenes <= {min(len(SHAPES), len(COLORS))}")
    if not 2 <= num_options <= min(len(SHAPES), len(COLORS)):
        raise ValueError(f"num_options must be in 2..{min(len(SHAPES), len(COLORS))}")
    if whole_seconds and math.ceil(min_scene_s) > math.floor(max_scene_s):
        raise ValueError(f"whole_seconds: no whole number of seconds in [{min_scene_s}, {max_scene_s}]")
    lo, hi = math.ceil(min_scene_s), math.floor(max_scene_s)
    if video_s is not None and not (whole_seconds and min_scenes * lo <= video_s <= max_scenes * hi):
        raise ValueError(f"video_s={video_s} needs whole_seconds and {min_scenes}-{max_scenes} scenes of {lo}-{hi} s")
    if queries not in ("pair", "per_scene", "landmark"):
        raise ValueError(f"queries must be 'pair', 'per_scene' or 'landmark', got {queries!r}")
    if landmark_color not in COLORS:
        raise ValueError(f"landmark_color must be one of {', '.join(COLORS)}, got {landmark_color!r}")
    rng = random.Random(seed)
    out = Path(out_dir)
    videos: list[SampleVideo] = []

    def duration() -> float:
        if whole_seconds:
            return float(rng.randint(lo, hi))
        return round(rng.uniform(min_scene_s, max_scene_s), 1)

    def split(total: int, k: int) -> list[float]:
        """k whole-second durations in [lo, hi] summing to total, uniform over such splits."""
        while True:
            parts = [rng.randint(lo, hi) for _ in range(k - 1)]
            last = total - sum(parts)
            if lo <= last <= hi:
                return [float(x) for x in [*parts, last]]

    for v in range(n):
        if video_s is not None:
            k = rng.choice([m for m in range(min_scenes, max_scenes + 1) if m * lo <= video_s <= m * hi])
            durations = split(video_s, k)
        else:
            k = rng.randint(min_scenes, max_scenes)
        if queries == "landmark":
            colors = rng.sample([c for c in COLORS if c != landmark_color], k)
            landmark = rng.randrange(k)
            colors[landmark] = landmark_color
        else:
            colors = rng.sample(list(COLORS), k)
        shapes = rng.sample(list(SHAPES), k)
        scenes = [
            SyntheticScene(
                label=f"a {'black' if _contrast(COLORS[c])[0] < 128 else 'white'} {s} on a {c} background",
                color=COLORS[c],
                shape=s,
                duration_s=durations[i] if video_s is not None else duration(),
                color_name=c,
            )
            for i, (c, s) in enumerate(zip(colors, shapes, strict=True))
        ]
        video_id = f"sample_{v:03d}"
        path = out / f"{video_id}{ext}"
        cuts = write_scene_video(path, scenes, fps=fps, size=size, seed=seed * 1000 + v, barcode=barcode)
        num_frames = scenes[-1].end_frame
        captions = [f"{sc.label[0].upper()}{sc.label[1:]}, moving slowly." for sc in scenes]
        if queries == "per_scene":
            qs = [_shape_query(f"{video_id}_q{i}", scenes, i, rng, num_options) for i in range(k)]
        elif queries == "landmark":
            qs = [_shape_query(f"{video_id}_q0", scenes, landmark, rng, num_options)]
        else:
            shape_scene = rng.randrange(k)
            color_scene = rng.choice([i for i in range(k) if i != shape_scene]) if k > 1 else shape_scene
            qs = [_shape_query(f"{video_id}_q0", scenes, shape_scene, rng, num_options)]
            sc = scenes[color_scene]
            opts, ans = _options(sc.color_name, list(COLORS), rng, num_options)
            qs.append(SampleQuery(f"{video_id}_q1", f"What is the background colour when the {sc.shape} is shown?",
                                  opts, ans, color_scene, sc.start_s, sc.end_s))
        videos.append(SampleVideo(path=path, video_id=video_id, fps=float(fps), num_frames=num_frames,
                                  scenes=scenes, captions=captions, queries=qs, cut_frames=cuts))
    return videos


def _shape_query(query_id: str, scenes: list[SyntheticScene], i: int, rng: random.Random, n: int) -> SampleQuery:
    sc = scenes[i]
    opts, ans = _options(sc.shape, list(SHAPES), rng, n)
    return SampleQuery(query_id, f"What shape is shown on the {sc.color_name} background?", opts, ans, i,
                       sc.start_s, sc.end_s)
